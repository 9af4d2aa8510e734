"""The refinement queue's figures in /metrics, read from Redis at each scrape (so every API replica reports the
whole queue): jobs waiting and running, job outcomes, job run times."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from service.refine_queue import DURATION_BUCKETS, OUTCOMES, QueueUnavailable, RefineQueue

log = logging.getLogger("service.refine_metrics")


class QueueCollector(Collector):
    """A prometheus-client collector of one :class:`RefineQueue`; ``seisbind_refine_queue_up`` is 0 (and the other
    figures absent) while Redis cannot be reached."""

    def __init__(self, queue: RefineQueue) -> None:
        self.queue = queue

    def describe(self) -> list[Metric]:
        return []  # figures are read at collection time only (no Redis access at registration)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("seisbind_refine_queue_up", "1 when the refinement job queue (Redis) answers")
        try:
            counts = self.queue.counts()
            outcomes, durations = self.queue.totals()
        except QueueUnavailable as e:
            log.warning("%s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        length = GaugeMetricFamily("seisbind_refine_queue_length", "Refinement jobs waiting for a worker")
        length.add_metric([], counts["queued"])
        yield length
        running = GaugeMetricFamily("seisbind_refine_jobs_running", "Refinement jobs being run by a worker")
        running.add_metric([], counts["running"])
        yield running
        jobs = CounterMetricFamily("seisbind_refine_jobs", "Refinement job outcomes (retried: run again after its "
                                                           "worker died)", labels=["outcome"])
        for outcome in sorted(set(OUTCOMES) | set(outcomes)):
            jobs.add_metric([outcome], outcomes.get(outcome, 0))
        yield jobs
        yield duration_histogram(durations)


def duration_histogram(durations: dict[str, float]) -> HistogramMetricFamily:
    """The run-time histogram from its Redis hash (per-bucket counts made cumulative)."""
    buckets, total = [], 0.0
    for bound in (*DURATION_BUCKETS, float("inf")):
        total += durations.get(repr(bound), 0.0)
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    h = HistogramMetricFamily("seisbind_refine_job_seconds", "Run time of refinement jobs (from start on a worker "
                                                              "to the end, whatever the outcome)")
    h.add_metric([], buckets, sum_value=durations.get("sum", 0.0))
    return h
