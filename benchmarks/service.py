"""Service benchmark (docs/benchmarks.md, ``benchmarks/results/service.json``): latency of POST /retrieve (batch 1,
k = 10) with .npy and with JSON bodies, and throughput with 1, 4 and 16 concurrent clients, against a real
``seisbind serve`` process on localhost, side by side with the in-process cost of the same work (ONNX encode plus
FAISS search through the service's own engine, no HTTP), measured in interleaved rounds of the same run.

Throughput is reported as a share of capacity: capacity_rps = usable cores / server CPU seconds per request at one
client (what the cores could serve if every one were busy with requests), share_of_capacity_16 = requests/s at 16
clients / capacity_rps. The bundle's default seismic graph (e.g. int8) and the full-precision one
(``full_precision`` profile, SEISBIND_SEISMIC_VARIANT=full) are measured in the same run.

Run from the repository root:  python -m benchmarks.service [--encoders BUNDLE] [--bank DIR] [--seconds 10]
                                   [--previous-encoders BUNDLE|default]
Smoke run (tiny bundle and bank, seconds of load, one profile; result in a temporary folder):
    python -m benchmarks.service --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.acquisition import GATHER_SHAPE
from seisbind.cores import usable_cores
from seisbind.npy import npy_bytes
from seisbind.provenance import portable_path

from benchmarks._common import add_output_args, write_result
from benchmarks._serving import (
    DEFAULT_BUNDLE,
    JSON_HEADERS,
    NPY_HEADERS,
    TINY_BUNDLE,
    BenchmarkServer,
    add_stage_delta,
    call,
    export_default_bundle,
    make_bank,
    percentiles_ms,
    stage_ms,
)
from index.build import build_index

K = 10
NPY_PATH = f"/retrieve?k={K}"
"""The timed .npy request's path (the body carries only the gather)."""
SHARE_TARGET = 0.9
"""16-client requests/s should reach this share of capacity."""
RPS_16_TARGET = 2.5 * 184
"""16-client requests/s: 2.5x the 184/s measured before the cheaper seismic encoder, on the same 2 cores."""
CLIENTS = (1, 4, 16)
FULL_PRECISION = "full_precision"
DEFAULT_PROFILES = [f"{FULL_PRECISION}:seismic_variant=full", "pinned:pin_threads=true", "latency:encode_workers=1"]
"""Besides the defaults (one micro-batch per core on one thread each, the bundle's default seismic graph): the
full-precision seismic graph (the previous one), the event loop pinned to worker 0's core and each other worker to
its own, and one micro-batch at a time on all cores."""
SEISMIC_VARIANTS = ("fast", "int8")
"""Variants the default (untrained) benchmark bundle is exported with; the service serves the last by default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", type=Path, default=None,
                   help="encoder bundle (default: the benchmark-size architecture, untrained, exported to a temporary "
                        "folder: same compute as a trained bundle)")
    p.add_argument("--previous-encoders", default=None, metavar="BUNDLE|default",
                   help="also measure this bundle with the default settings, in the same run, recorded under "
                        "previous_bundle ('default': the untrained benchmark-size export, what --encoders defaults to)")
    p.add_argument("--bank", type=Path, default=None, help="velocity models to index (default: synthetic)")
    p.add_argument("--bank-size", type=int, default=2000, help="synthetic bank size when --bank is not given")
    p.add_argument("--requests", type=int, default=200, help="sequential .npy requests (and in-process runs) timed")
    p.add_argument("--json-requests", type=int, default=40, help="sequential JSON requests timed")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the sequential timings are split into")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of load per client count (split in two)")
    p.add_argument("--gap-ms", type=float, default=10.0,
                   help="idle time between sequential calls, the same for in-process and HTTP timings")
    p.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                   help="a service setting for both the server and the in-process engine, e.g. ort_intra_op_threads=1")
    p.add_argument("--profile", action="append", default=None, metavar="NAME:NAME=VALUE[,NAME=VALUE]",
                   help="also measure these settings (on top of --setting), in the same run, recorded under "
                        f"profiles.NAME (default: {' and '.join(DEFAULT_PROFILES)}; 'none' for none)")
    p.add_argument("--replicas", type=int, default=2,
                   help="also measure this many servers over the same index, 16 clients split among them, beside "
                        "one server (0: skip)")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--no-write", action="store_true", help="print the figures without writing the result file")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.bank_size, args.requests, args.json_requests, args.rounds = 40, 6, 2, 2
        args.seconds, args.gap_ms = 1.0, 1.0
        args.profile = args.profile or [f"{FULL_PRECISION}:seismic_variant=full"]
    return args


def in_process_engine(encoders: Path, index_root: Path, settings: dict[str, str]):  # noqa: ANN201 - Engine
    """The service's own engine (same ONNX Runtime sessions and settings as the server), without HTTP."""
    from service.core.config import Settings
    from service.engine import Engine
    from service.metrics import ServiceMetrics

    engine = Engine(Settings(encoders=encoders, index_root=index_root, **settings), ServiceMetrics())
    engine.warm_up()
    engine.load_current_index()
    return engine


def time_in_process(engine: Any, gather: np.ndarray, n: int, gap_s: float) -> list[float]:
    """Wall time of encode + search of one gather (batch 1, k = 10), n times, ``gap_s`` apart."""
    from service.engine import GatherQuery

    q = [GatherQuery(gather[None], K)]
    out = []
    for _ in range(n):
        time.sleep(gap_s)
        t = time.perf_counter()
        engine._encode_and_search(q)
        out.append(time.perf_counter() - t)
    return out


def time_http(server: BenchmarkServer, path: str, body: bytes, headers: dict[str, str], n: int,
              gap_s: float = 0.0) -> list[float]:
    """Wall time of n sequential requests on one kept-alive connection, ``gap_s`` apart (client side, response
    fully read)."""
    conn = server.connection()
    out = []
    try:
        for _ in range(n):
            time.sleep(gap_s)
            t = time.perf_counter()
            status, data = call(conn, "POST", path, body, headers)
            out.append(time.perf_counter() - t)
            if status != 200:
                raise RuntimeError(f"POST {path}: HTTP {status}: {data[:300]!r}")
    finally:
        conn.close()
    return out


def throughput(server: BenchmarkServer, body: bytes, clients: int, seconds: float) -> tuple[int, float]:
    """(completed requests, wall seconds) of ``clients`` threads posting .npy /retrieve for ``seconds``."""
    done = [0] * clients
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        conn = server.connection()
        try:
            while time.monotonic() < stop:
                status, data = call(conn, "POST", NPY_PATH, body, NPY_HEADERS)
                if status != 200:
                    errors.append(f"HTTP {status}: {data[:200]!r}")
                    return
                done[i] += 1
        finally:
            conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return sum(done), time.monotonic() - t0


def parse_profiles(given: list[str] | None) -> dict[str, dict[str, str]]:
    """--profile values -> {name: {setting: value}}."""
    profiles = {}
    for spec in given if given is not None else DEFAULT_PROFILES:
        if spec == "none":
            continue
        name, _, kvs = spec.partition(":")
        profiles[name] = dict(kv.split("=", 1) for kv in kvs.split(",") if kv)
    return profiles


def main(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    base = dict(kv.split("=", 1) for kv in args.setting)
    with tempfile.TemporaryDirectory(prefix="seisbind-service-bench-") as tmp:
        work = args.work or Path(tmp)
        encoders = args.encoders or export_default_bundle(work / "bundle", tiny=args.smoke,
                                                          seismic_variants=SEISMIC_VARIANTS)
        bank = args.bank or make_bank(work / "bank", args.bank_size, seed=0)
        index_root = work / "index"
        build_index(encoders, bank, index_root, index_type="auto")
        figures = measure(args, encoders, index_root, base, work / "server.log", floor=work)
        figures["profiles"] = {name: measure(args, encoders, index_root, {**base, **extra}, work / f"server-{name}.log")
                               for name, extra in parse_profiles(args.profile).items()}
        if args.replicas > 1:
            figures["replicas"] = replicas(args, encoders, index_root, base, work)
        if args.previous_encoders:
            figures.update(previous_bundle(args, work, bank, base, figures))
    if FULL_PRECISION in figures["profiles"]:
        prev = figures["profiles"][FULL_PRECISION]
        figures["previous_graph"] = {k: prev[k] for k in ("capacity_rps", "share_of_capacity_16", "throughput_rps",
                                                          "server_cpu_ms_per_request", "in_process_ms")}
        figures["previous_graph"]["variant"] = prev["server"]["variants"].get("seismic")
        figures["rps_16_over_previous_graph"] = round(figures["throughput_rps"]["16"] / prev["throughput_rps"]["16"], 3)
        figures["capacity_over_previous_graph"] = round(figures["capacity_rps"] / prev["capacity_rps"], 3)
    figures["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    figures["bundle"] = (portable_path(args.encoders) if args.encoders else TINY_BUNDLE if args.smoke else
                         DEFAULT_BUNDLE)
    figures["bank"] = portable_path(args.bank) if args.bank else f"synthetic, {args.bank_size} models"
    return figures


def replicas(args: argparse.Namespace, encoders: Path, index_root: Path, settings: dict[str, str],
             work: Path) -> dict[str, Any]:
    """16 clients split evenly among ``--replicas`` servers over the same index (what several service processes
    behind a load balancer would serve on these cores), alternated with all 16 on the first server, in one run."""
    gather = (np.random.default_rng(1).standard_normal(GATHER_SHAPE) * 5).astype(np.float32)
    body, env = npy_bytes(gather), {f"SEISBIND_{k.upper()}": v for k, v in settings.items()}
    servers: list[BenchmarkServer] = []
    try:
        for i in range(args.replicas):
            servers.append(BenchmarkServer.launch(encoders, index_root, work / f"server-replica{i}.log", env))
        for server in servers:
            throughput(server, body, 16 // args.replicas, min(2.0, args.seconds))  # warm-up
        totals = {"one": [0, 0.0, 0.0], "split": [0, 0.0, 0.0]}  # requests, s, server CPU s
        for phase in ("one", "split", "split", "one"):  # ABBA against drift
            split = [16] if phase == "one" else [16 // len(servers)] * len(servers)
            cpu0 = [s.cpu_seconds() for s in servers]
            done: list[tuple[int, float]] = []
            threads = [threading.Thread(target=lambda s=s, c=c: done.append(throughput(s, body, c, args.seconds / 2)))
                       for s, c in zip(servers, split)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
            for i, v in enumerate((sum(n for n, _ in done), wall,
                                   sum(s.cpu_seconds() - c for s, c in zip(servers, cpu0)))):
                totals[phase][i] += v
    finally:
        for server in servers:
            server.stop()
    figures = {name: {"rps_16": round(n / s, 2), "server_cpu_ms_per_request": round(1000 * cpu / n, 2),
                      "server_cpu_cores_used": round(cpu / s, 2)} for name, (n, s, cpu) in totals.items()}
    return {"servers": len(servers), **figures,
            "rps_16_split_over_one": round(figures["split"]["rps_16"] / figures["one"]["rps_16"], 3),
            "notes": "one: 16 clients on one server; split: 16 clients split evenly among the servers (processes "
                     "of `seisbind serve` over the same index root, each with the default settings)"}


def previous_bundle(args: argparse.Namespace, work: Path, bank: Path, settings: dict[str, str],
                    current: dict[str, Any]) -> dict[str, Any]:
    """``previous_bundle`` (the figures of ``--previous-encoders`` on the same bank and settings, measured after the
    current bundle's) and the current bundle's 16-client requests/s and capacity over its."""
    if args.previous_encoders == "default":
        encoders = export_default_bundle(work / "previous-bundle", tiny=args.smoke, seismic_variants=SEISMIC_VARIANTS)
    else:
        encoders = Path(args.previous_encoders)
    index_root = work / "previous-index"
    build_index(encoders, bank, index_root, index_type="auto")
    prev = measure(args, encoders, index_root, settings, work / "server-previous.log")
    prev["bundle"] = (args.previous_encoders if args.previous_encoders == "default" else portable_path(encoders))
    return {"previous_bundle": prev,
            "rps_16_over_previous_bundle": round(current["throughput_rps"]["16"] / prev["throughput_rps"]["16"], 3),
            "capacity_over_previous_bundle": round(current["capacity_rps"] / prev["capacity_rps"], 3)}


def measure(args: argparse.Namespace, encoders: Path, index_root: Path, settings: dict[str, str],
            log: Path, floor: Path | None = None) -> dict[str, Any]:
    """Every figure of service.json for one set of service settings; with ``floor`` (a working folder), also the
    HTTP floor's latency for the same .npy request (``http_floor``), interleaved with the others."""
    gather = (np.random.default_rng(1).standard_normal(GATHER_SHAPE) * 5).astype(np.float32)
    npy_body = npy_bytes(gather)
    json_body = json.dumps({"gathers": gather.tolist(), "k": K}).encode()
    engine = in_process_engine(encoders, index_root, settings)
    server = BenchmarkServer.launch(encoders, index_root, log,
                                    {f"SEISBIND_{k.upper()}": v for k, v in settings.items()})
    floor_server: BenchmarkServer | None = None
    try:
        info = server.json("/v1/info")
        time_http(server, NPY_PATH, npy_body, NPY_HEADERS, 5)  # warm-up
        time_http(server, "/retrieve", json_body, JSON_HEADERS, 2)
        time_in_process(engine, gather, 5, 0.0)
        if floor:  # answers with the bytes of a real response
            floor_server = BenchmarkServer.floor(server.request("POST", NPY_PATH, npy_body, NPY_HEADERS)[1],
                                                 floor)
            time_http(floor_server, NPY_PATH, npy_body, NPY_HEADERS, 5)  # warm-up
        gap = args.gap_ms / 1000.0
        inproc: list[float] = []
        npy: list[float] = []
        js: list[float] = []
        bare: list[float] = []
        stages: dict[str, dict[str, tuple[float, float]]] = {"npy": {}, "json": {}}
        for _ in range(args.rounds):  # interleaved, so drifting machine load hits them all alike
            inproc += time_in_process(engine, gather, args.requests // args.rounds, gap)
            if floor_server:
                bare += time_http(floor_server, NPY_PATH, npy_body, NPY_HEADERS, args.requests // args.rounds,
                                  gap)
            t0 = server.stage_totals()
            npy += time_http(server, NPY_PATH, npy_body, NPY_HEADERS, args.requests // args.rounds, gap)
            t1 = server.stage_totals()
            js += time_http(server, "/retrieve", json_body, JSON_HEADERS, args.json_requests // args.rounds, gap)
            t2 = server.stage_totals()
            add_stage_delta(stages["npy"], t0, t1)
            add_stage_delta(stages["json"], t1, t2)
        throughput(server, npy_body, 16, min(2.0, args.seconds))  # warm-up
        # requests, s, server CPU s, batched gathers, batches, client (this process) CPU s
        counts = {c: [0, 0.0, 0.0, 0.0, 0.0, 0.0] for c in CLIENTS}
        for c in (*CLIENTS, *reversed(CLIENTS)):  # ABBA order against drift
            cpu0, b0, own0 = server.cpu_seconds(), _batch_totals(server), time.process_time()
            n, s = throughput(server, npy_body, c, args.seconds / 2)
            b1 = _batch_totals(server)
            for i, v in enumerate((n, s, server.cpu_seconds() - cpu0, b1[0] - b0[0], b1[1] - b0[1],
                                   time.process_time() - own0)):
                counts[c][i] += v
    finally:
        server.stop()
        if floor_server:
            floor_server.stop()
    rps = {str(c): round(n / s, 2) for c, (n, s, *_) in counts.items()}
    cores_used = {str(c): round(cpu / s, 2) for c, (_, s, cpu, *_) in counts.items()}
    cpu_ms_per_request = {str(c): round(1000 * cpu / n, 2) for c, (n, _, cpu, *_) in counts.items()}
    mean_batch = {str(c): round(g / b, 2) if b else None for c, (*_, g, b, _) in counts.items()}
    client_cpu_ms = {str(c): round(1000 * own / n, 2) for c, (n, *_, own) in counts.items()}
    cores = usable_cores()
    capacity = cores / (counts[1][2] / counts[1][0])  # usable cores / server CPU s per request at one client
    share16 = rps["16"] / capacity
    p_in, p_npy, p_js = percentiles_ms(inproc), percentiles_ms(npy), percentiles_ms(js)
    figures = {
        "npy": p_npy, "json": p_js,
        "in_process_ms": p_in["p50_ms"], "in_process": p_in,
        "npy_p50_over_in_process": round(p_npy["p50_ms"] / p_in["p50_ms"], 3),
        "json_p50_over_in_process": round(p_js["p50_ms"] / p_in["p50_ms"], 3),
        "throughput_rps": rps,
        "throughput_16_over_1": round(rps["16"] / rps["1"], 3),
        "capacity_rps": round(capacity, 2), "share_of_capacity_16": round(share16, 3), "usable_cores": cores,
        "server_cpu_cores_used": cores_used,
        "server_cpu_ms_per_request": cpu_ms_per_request,
        "client_cpu_ms_per_request": client_cpu_ms,
        "targets": {"npy_p50_over_in_process_max": 1.3, "share_of_capacity_16_min": SHARE_TARGET,
                    "throughput_16_rps_min": RPS_16_TARGET,
                    "npy_p50_met": p_npy["p50_ms"] <= 1.3 * p_in["p50_ms"],
                    "share_of_capacity_met": share16 >= SHARE_TARGET,
                    "throughput_16_met": rps["16"] >= RPS_16_TARGET},
        **(http_floor(p_npy, p_in, percentiles_ms(bare)) if bare else {}),
        "server_stage_ms_sequential": {kind: stage_ms(t) for kind, t in stages.items()},
        "server": {k: info[k] for k in ("encoder", "count", "index_type", "providers", "variants", "intra_op_threads",
                                        "batching")},
        "mean_batch_gathers": mean_batch,
        "k": K, "bank_size": info["count"], "seconds_per_client_count": args.seconds, "gap_ms": args.gap_ms,
        "settings": settings,
        "notes": "latencies are client-side wall times of sequential requests on one kept-alive connection; "
                 "in_process_ms is the p50 of the same encode + search without HTTP, interleaved with them; "
                 "server_cpu_cores_used is the server process's CPU time per wall second during each load phase; "
                 "capacity_rps is usable_cores / (server CPU s per request at one client); share_of_capacity_16 is "
                 "the 16-client requests/s over it (the clients share the same cores); "
                 "client_cpu_ms_per_request is this process's (the clients') CPU time per request "
                 "(the clients run on the same machine)",
    }
    return figures


def http_floor(npy: dict[str, float], in_process: dict[str, float], bare: dict[str, float]) -> dict[str, Any]:
    """The HTTP floor's latency beside the service's: how much of the .npy request's time over the in-process work
    any application on this server stack would spend, and the floor's own p50 over in-process."""
    over = npy["p50_ms"] - in_process["p50_ms"]
    return {"http_floor": bare, "npy_p50_minus_in_process_ms": round(over, 3),
            "http_floor_share_of_npy_overhead": round(bare["p50_ms"] / over, 3) if over > 0 else None,
            "npy_p50_over_in_process_floor": round((in_process["p50_ms"] + bare["p50_ms"]) / in_process["p50_ms"], 3),
            "http_floor_notes": "http_floor: p50 etc. of the same .npy request to benchmarks._http_floor (the "
                                "service's uvicorn, uvloop and HTTP protocol around an application that reads the "
                                "body and answers with the bytes of a real /retrieve response, no other work), "
                                "interleaved with the others; npy_p50_over_in_process_floor: the ratio a service "
                                "whose only cost besides the in-process work were that floor would reach"}


def _batch_totals(server: BenchmarkServer) -> tuple[float, float]:
    """(gathers encoded, micro-batches run) so far, from /metrics."""
    vals = {"seisbind_batch_gathers_sum": 0.0, "seisbind_batch_gathers_count": 0.0}
    for line in server.request("GET", "/metrics")[1].decode().splitlines():
        name, _, v = line.partition(" ")
        if name in vals:
            vals[name] = float(v)
    return vals["seisbind_batch_gathers_sum"], vals["seisbind_batch_gathers_count"]


if __name__ == "__main__":
    ARGS = parse_args()
    result = main(ARGS)
    print(json.dumps(result, indent=1))
    if not ARGS.no_write:
        print("wrote", write_result("service", result, ARGS.out, ARGS.smoke))
