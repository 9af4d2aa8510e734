"""Refinement jobs end to end: a real ``redis-server`` on a free port, real ``seisbind serve`` processes (uvicorn) and
real ``seisbind refine-worker`` processes running full-waveform inversion (model.refine.refine_fwi) on tiny
iteration counts.

* submit .npy gathers to one API process, stop it, poll another to done (a job outlives the API that took it):
  the refined model, its descriptors, a misfit history that ends no higher than the start, the outcome and run
  time in /metrics;
* bad input is answered 422 (and an unknown job 404) with nothing queued; the queue full is answered 503 with
  Retry-After; waiting jobs are cancelled at once;
* a running job is cancelled at its next iteration;
* a worker killed mid-job (SIGKILL; its work horse dies with it) leaves the job run again by another worker, and,
  killed again, failed with the reason, never lost.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.refine_queue import QUEUE_NAME
from tests.redis_fixtures import RedisServer, WorkerProcess, pid_alive
from tests.service_fixtures import NPY, Server, assert_error, npy, serve, small_service_files, stop_server

pytestmark = pytest.mark.timeout(600)
MAX_QUEUED = 2
RETRY_AFTER = 17
QUEUE_ENV = {"SEISBIND_REFINE_MAX_QUEUED": str(MAX_QUEUED), "SEISBIND_REFINE_RETRIES": "1",
             "SEISBIND_REFINE_RETRY_AFTER_S": str(RETRY_AFTER), "SEISBIND_REFINE_MAX_ITERATIONS": "60",
             "SEISBIND_REFINE_DEFAULT_ITERATIONS": "2",
             "SEISBIND_REFINE_MAX_GATHERS": "2", "SEISBIND_INDEX_POLL_S": "0", "SEISBIND_ORT_INTRA_OP_THREADS": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained bundle, a 40-model flatvel-a bank and its index, and a query gather simulated from a model that
    is not in the bank (with the model, the truth)."""
    import torch

    from model.families import generate
    from model.simulator import simulate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("refine")
    bundle, _, index = small_service_files(root, 40)
    truth = generate("flatvel-a", 1, np.random.default_rng(123))
    np.save(root / "truth.npy", truth)
    np.save(root / "query.npy", simulate(truth)[0])
    (root / "logs").mkdir()
    return {"bundle": bundle, "index": index, "root": root, "logs": root / "logs"}


@pytest.fixture(scope="module")
def redis_server(files: dict[str, Path]) -> Iterator[RedisServer]:
    server = RedisServer(files["root"] / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(files: dict[str, Path], redis_server: RedisServer) -> Iterator[Server]:
    server = serve(files["bundle"], files["index"], files["logs"] / "api.log",
                   {"SEISBIND_REDIS_URL": redis_server.url, **QUEUE_ENV})
    yield server
    stop_server(server)


@pytest.fixture()
def fresh(redis_server: RedisServer) -> RedisServer:
    """An empty database for each test (no worker of an earlier test is left running)."""
    redis_server.client.flushdb()
    return redis_server


@pytest.fixture()
def workers(files: dict[str, Path], fresh: RedisServer, request: pytest.FixtureRequest) -> Iterator[list]:
    """Starts ``seisbind refine-worker`` processes on demand (``start(name)``); stops what is left afterwards."""
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        w = WorkerProcess(fresh.url, files["logs"] / f"{request.node.name}-{name}.log", f"{request.node.name}-{name}")
        started.append(w)
        return w

    yield [start, started]
    for w in started:
        w.stop()


def submit(client: httpx.Client, body: bytes, **params: object) -> httpx.Response:
    return client.post("/refine", content=body, headers=NPY, params={k: v for k, v in params.items()})


def poll(client: httpx.Client, job_id: str, until: set[str], timeout: float = 240.0,
         check: object = None) -> dict:
    """GET /refine/{id} until its state is in ``until`` (or ``check(doc)`` holds); fails on timeout."""
    deadline = time.monotonic() + timeout
    doc: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/refine/{job_id}")
        assert r.status_code == 200, r.text
        doc = r.json()
        if doc["state"] in until or (callable(check) and check(doc)):
            return doc
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout} s: {doc}")


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in /metrics"
    return float(m.group(1))


def queued(redis_server: RedisServer) -> int:
    return int(redis_server.client.llen(f"rq:queue:{QUEUE_NAME}"))


def test_submit_poll_done_across_an_api_restart(files: dict[str, Path], fresh: RedisServer, workers: list) -> None:
    """The job is accepted by one API process, which then stops; a worker runs it; another API process reports it."""
    start, _ = workers
    env = {"SEISBIND_REDIS_URL": fresh.url, **QUEUE_ENV}
    body = (files["root"] / "query.npy").read_bytes()
    first = serve(files["bundle"], files["index"], files["logs"] / "api-first.log", env)
    try:
        with first.client() as c:
            r = submit(c, body, method="fwi", start="topk", k=3, iterations=2)
    finally:
        stop_server(first)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and (job["method"], job["start"], job["iterations"]) == ("fwi", "topk", 2)
    assert r.headers["Location"] == f"/refine/{job['job_id']}"
    start("a")
    second = serve(files["bundle"], files["index"], files["logs"] / "api-second.log", env)
    try:
        with second.client() as c:
            doc = poll(c, job["job_id"], {"succeeded", "failed", "cancelled"})
            text = c.get("/metrics").text
    finally:
        stop_server(second)
    assert doc["state"] == "succeeded", doc
    assert doc["progress"] == 1.0 and doc["attempt"] == 1 and doc["error"] is None and "results" not in doc
    res = doc["result"]
    model = np.asarray(res["velocity_model"])
    assert model.shape == (70, 70) and 1500 <= model.min() and model.max() <= 4500
    assert set(res["descriptors"]) == {"v_mean", "v_std", "v_min", "v_max", "v_top", "v_bottom", "grad_z", "grad_x"}
    assert abs(res["descriptors"]["v_mean"] - model.mean()) < 0.5
    assert np.asarray(res["start_model"]).shape == (70, 70)
    assert len(res["start_ids"]) == 3 and 1 <= res["iterations"] == len(res["misfit"]) <= 2
    assert res["final_misfit"] <= res["start_misfit"]
    assert len(res["neighbour_misfits"]) == 3 and res["best_fit_rank"] == int(np.argmin(res["neighbour_misfits"]))
    assert metric(text, "seisbind_refine_jobs_total", '{outcome="succeeded"}') == 1
    assert metric(text, "seisbind_refine_job_seconds_count") == 1
    assert metric(text, "seisbind_refine_queue_length") == 0 and metric(text, "seisbind_refine_queue_up") == 1


def test_bestfit_starts_from_the_neighbour_whose_data_fit_best(api: Server, files: dict[str, Path],
                                                               workers: list) -> None:
    """The worker simulates the k neighbours, reports their misfits, and starts FWI from the best-fitting one."""
    start, _ = workers
    body = (files["root"] / "query.npy").read_bytes()
    with api.client() as c:
        r = submit(c, body, method="fwi", start="bestfit", k=4, iterations=1)
        assert r.status_code == 202 and r.json()["start"] == "bestfit", r.text
        start("a")
        doc = poll(c, r.json()["job_id"], {"succeeded", "failed", "cancelled"})
        hits = c.post("/retrieve?k=4&include_models=true", content=body, headers=NPY).json()["results"][0]
    assert doc["state"] == "succeeded" and doc["start"] == "bestfit", doc
    res = doc["result"]
    misfits = np.asarray(res["neighbour_misfits"])
    best = int(np.argmin(misfits))
    assert misfits.shape == (4,) and res["best_fit_rank"] == best
    assert res["start_ids"] == [h["id"] for h in hits["neighbors"]]
    np.testing.assert_allclose(res["start_model"], hits["neighbors"][best]["velocity_model"], atol=0.01)
    assert res["start_misfit"] == pytest.approx(misfits.min(), rel=1e-4)  # FWI's own measure of the start
    with api.client() as c:  # method check: the same physics check, no FWI; the best-fitting neighbour is the answer
        r = submit(c, body, method="check", k=4)
        assert r.status_code == 202 and (r.json()["start"], r.json()["iterations"]) == ("bestfit", 0), r.text
        checked = poll(c, r.json()["job_id"], {"succeeded", "failed", "cancelled"})["result"]
    assert checked["iterations"] == 0 and checked["neighbour_misfits"] == pytest.approx(res["neighbour_misfits"])
    np.testing.assert_allclose(checked["velocity_model"], hits["neighbors"][best]["velocity_model"], atol=0.01)


def test_bad_input_is_refused_before_anything_is_queued(api: Server, files: dict[str, Path],
                                                        fresh: RedisServer) -> None:
    good = np.load(files["root"] / "query.npy")
    nan = good.copy()
    nan[1, 500, 3] = np.nan
    with api.client() as c:
        cases = [
            (submit(c, npy(good), iterations=0), "iterations=0 is out of range: need 1 <= iterations <= 60"),
            (submit(c, npy(good), iterations=61), "SEISBIND_REFINE_MAX_ITERATIONS"),
            (submit(c, npy(good), method="both"), "no learned refiner"),
            (submit(c, npy(good), start="learned"), "no learned refiner"),
            (submit(c, npy(good), method="fwi", start="nearest"), "start"),
            (submit(c, npy(good), method="check", start="topk"), "method 'check' returns the retrieved model"),
            (submit(c, npy(good), method="check", iterations=3), "iterations only apply to methods 'fwi' and 'both'"),
            (submit(c, npy(good), method="magic"), "method"),
            (submit(c, npy(good), k=0), "k=0 is out of range"),
            (submit(c, npy(good), k=41), "the index holds 40 entries"),
            (submit(c, npy(nan)), "gather 0 holds NaN or Inf"),
            (submit(c, npy(good[:, :999])), "expected (5, 1000, 70)"),
            (submit(c, npy(np.stack([good] * 3))), "at most 2 are accepted (SEISBIND_REFINE_MAX_GATHERS)"),
            (submit(c, npy(good), bogus=1), "unknown query parameter 'bogus'"),
            (c.post("/refine", json={"gathers": good.tolist(), "iterations": 1.5}), "iterations"),
            (c.post("/refine", json={"gathers": good.tolist(), "steps": 3}), "steps"),
        ]
        for r, fragment in cases:
            assert_error(r, 422, fragment)
        assert_error(c.get("/refine/" + "0" * 32), 404, "no refinement job")
        assert_error(c.get("/refine/not-a-job"), 404, "32 hexadecimal digits")
        assert_error(c.delete("/refine/" + "f" * 32), 404, "no refinement job")
        text = c.get("/metrics").text
    assert queued(fresh) == 0 and not fresh.client.keys("rq:job:*")
    assert metric(text, "seisbind_refine_queue_length") == 0


def test_queue_full_answers_503_and_waiting_jobs_cancel_at_once(api: Server, files: dict[str, Path],
                                                                 fresh: RedisServer) -> None:
    body = (files["root"] / "query.npy").read_bytes()
    with api.client() as c:  # no worker runs: jobs wait
        ids = [submit(c, body, method="fwi", start="smooth", iterations=2).json()["job_id"] for _ in range(MAX_QUEUED)]
        r = submit(c, body, method="fwi", start="smooth", iterations=2)
        assert_error(r, 503, f"the refinement queue is full ({MAX_QUEUED} jobs waiting)")
        assert r.headers["Retry-After"] == str(RETRY_AFTER)
        assert queued(fresh) == MAX_QUEUED
        for job_id in ids:
            assert c.get(f"/refine/{job_id}").json()["state"] == "queued"
            r = c.delete(f"/refine/{job_id}")
            assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
            doc = c.get(f"/refine/{job_id}").json()
            assert doc["state"] == "cancelled" and doc["cancel_requested"] and doc["result"] is None
            assert c.delete(f"/refine/{job_id}").json()["state"] == "cancelled"  # idempotent
        assert queued(fresh) == 0
        assert submit(c, body, method="fwi", start="top1", iterations=1).status_code == 202  # room again
        text = c.get("/metrics").text
    assert metric(text, "seisbind_refine_jobs_total", '{outcome="cancelled"}') == MAX_QUEUED
    assert metric(text, "seisbind_refine_queue_length") == 1


def test_running_job_stops_at_the_next_iteration_when_cancelled(api: Server, files: dict[str, Path],
                                                                workers: list) -> None:
    start, _ = workers
    start("a")
    with api.client() as c:
        job_id = submit(c, (files["root"] / "query.npy").read_bytes(), method="fwi", start="topk",
                        iterations=60).json()["job_id"]
        poll(c, job_id, set(), check=lambda d: d["state"] == "running")
        r = c.delete(f"/refine/{job_id}")
        assert r.status_code == 202 and r.json() == {"job_id": job_id, "state": "running", "cancel_requested": True}
        doc = poll(c, job_id, {"cancelled", "succeeded", "failed"}, timeout=120)
        assert doc["state"] == "cancelled", doc
        assert doc["result"]["stopped"] == "cancelled" and doc["result"]["iterations"] <= 2
        assert c.delete(f"/refine/{job_id}").json()["state"] == "cancelled"
        text = c.get("/metrics").text
    assert metric(text, "seisbind_refine_jobs_total", '{outcome="cancelled"}') == 1


def test_killed_worker_job_is_run_again_then_failed_with_the_reason(api: Server, files: dict[str, Path],
                                                                    workers: list) -> None:
    start, _ = workers
    body = (files["root"] / "query.npy").read_bytes()
    with api.client() as c:
        job_id = submit(c, body, method="fwi", start="topk", iterations=60).json()["job_id"]
        for attempt, name in ((1, "a"), (2, "b")):
            w = start(name)
            doc = poll(c, job_id, set(), check=lambda d, n=attempt: d["state"] == "running" and d["attempt"] == n)
            assert doc["state"] == "running"
            horses = w.children()
            assert horses, "the worker runs its job in a work horse"
            w.kill()
            deadline = time.monotonic() + 10
            while any(pid_alive(p) for p in horses) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any(pid_alive(p) for p in horses), "the work horse outlived its worker"
            # heartbeats stop; 1 + 2 s later the job counts as abandoned: queued again, then failed
            doc = poll(c, job_id, {"queued", "failed"} if attempt == 1 else {"failed"}, timeout=60)
        assert doc["state"] == "failed" and doc["attempt"] == 2, doc
        assert "stopped sending heartbeats (killed or lost)" in doc["error"] and "attempt 2" in doc["error"]
        text = c.get("/metrics").text
    assert metric(text, "seisbind_refine_jobs_total", '{outcome="retried"}') == 1
    assert metric(text, "seisbind_refine_jobs_total", '{outcome="failed"}') == 1
    assert metric(text, "seisbind_refine_jobs_running") == 0


@pytest.fixture(scope="module")
def refiner_bundle(files: dict[str, Path]) -> Path:
    """The bundle plus an untrained learned refiner (k = 3; untrained, it returns the neighbours' similarity-weighted
    mean); the encoders are unchanged, so the index built with them still serves."""
    import json
    import shutil

    import torch

    from seisbind.bundle import REFINER_FILE, finish_manifest

    from model.refiner import create_refiner
    from model.refiner_config import RefinerConfig
    from model.refiner_export import export_refiner_onnx

    torch.set_num_threads(1)
    out = files["root"] / "bundle-with-refiner"
    shutil.copytree(files["bundle"], out)
    export_refiner_onnx(create_refiner(RefinerConfig.tiny(k=3), seed=0), out / REFINER_FILE)
    finish_manifest(out, {**json.loads((out / "manifest.json").read_text()), "refiner": {"k": 3}})
    return out


def test_learned_answers_at_once_and_both_queues_fwi_from_it(files: dict[str, Path], refiner_bundle: Path,
                                                             fresh: RedisServer) -> None:
    from seisbind.start_models import topk_mean

    body = (files["root"] / "query.npy").read_bytes()
    server = serve(refiner_bundle, files["index"], files["logs"] / "api-refiner.log",
                   {"SEISBIND_REDIS_URL": fresh.url, **QUEUE_ENV})
    try:
        with server.client() as c:
            r = submit(c, body, method="learned", k=3)
            assert r.status_code == 200, r.text
            (res,) = r.json()["results"]
            hits = c.post("/retrieve?k=3&include_models=true", content=body, headers=NPY).json()["results"][0]
            want = topk_mean(np.asarray([h["velocity_model"] for h in hits["neighbors"]]),
                             np.asarray([h["score"] for h in hits["neighbors"]]))
            np.testing.assert_allclose(np.asarray(res["velocity_model"]), want, atol=1.0)
            assert res["start_ids"] == [h["id"] for h in hits["neighbors"]] and len(res["descriptors"]) == 8
            assert queued(fresh) == 0
            assert_error(submit(c, body, method="both", start="top1"), 422, "method 'both' runs FWI from the learned")
            assert_error(submit(c, body, method="learned", start="topk"), 422, "a start model only applies to FWI")
            r = submit(c, body, method="both", iterations=2)
            assert r.status_code == 202 and r.json()["start"] == "learned", r.text
            assert queued(fresh) == 1
            assert c.delete(f"/refine/{r.json()['job_id']}").json()["state"] == "cancelled"
    finally:
        stop_server(server)


def test_only_a_job_whose_worker_died_is_run_again(fresh: RedisServer) -> None:
    """The failure callback on real rq jobs: an error of the job itself (or its time limit) would come back, so it
    fails at once; a job abandoned by a dead worker keeps its retry. Outcomes are counted in Redis."""
    from rq import Queue, Retry
    from rq.exceptions import AbandonedJobError
    from rq.timeouts import JobTimeoutException

    from service.refine_queue import JOB_FUNCTION, RefineQueue, on_failure

    q = Queue(QUEUE_NAME, connection=fresh.client)
    for exc, retried in ((ValueError, False), (JobTimeoutException, False), (AbandonedJobError, True)):
        job = q.enqueue(JOB_FUNCTION, retry=Retry(max=1))
        on_failure(job, fresh.client, exc, exc(), None)
        assert job.should_retry is retried, exc
    outcomes, _ = RefineQueue(fresh.url, max_queued=1, retries=1, keep_s=60).totals()
    assert outcomes == {"failed": 2, "retried": 1}


def test_a_killed_work_horse_is_noticed_at_once_and_its_job_run_again(api: Server, files: dict[str, Path],
                                                                      workers: list) -> None:
    """The job's own process dies (as under the OOM killer) while its worker lives: the worker notices at once and
    runs the job again; then a cancel ends it."""
    import os
    import signal

    start, _ = workers
    w = start("a")
    with api.client() as c:
        job_id = submit(c, (files["root"] / "query.npy").read_bytes(), method="fwi", start="topk",
                        iterations=60).json()["job_id"]
        poll(c, job_id, set(), check=lambda d: d["state"] == "running" and d["attempt"] == 1)
        (horse,) = w.children()
        os.kill(horse, signal.SIGKILL)
        poll(c, job_id, set(), timeout=60, check=lambda d: d["state"] == "running" and d["attempt"] == 2)
        assert w.proc.poll() is None, "the worker survives its work horse"
        c.delete(f"/refine/{job_id}")
        doc = poll(c, job_id, {"cancelled", "failed", "succeeded"}, timeout=120)
        text = c.get("/metrics").text
    assert doc["state"] == "cancelled" and doc["attempt"] == 2, doc
    assert metric(text, "seisbind_refine_jobs_total", '{outcome="retried"}') == 1
    assert metric(text, "seisbind_refine_jobs_total", '{outcome="cancelled"}') == 1
