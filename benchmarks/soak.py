"""Soak test of the service (docs/benchmarks.md, ``benchmarks/results/soak.json``): minutes of mixed load against a
real ``seisbind serve`` process — .npy and JSON /retrieve, /infer-descriptors, /retrieve-by-descriptors, requests
that must be refused (the hostile and careless inputs of issue 19 among them: JSON bodies that json.loads would blow
up, gathers with no signal or absurd amplitudes, impossible descriptors, unknown query parameters, malformed admin
bodies without a token) — while admin rebuilds swap the index back and forth between two banks. Reports failed
requests (any valid request not answered 200, any bad one not answered 4xx, any connection error), latency
percentiles, the server's resident-memory growth and the rebuilds completed.

Clients are paced to a target request rate (by default the 16-client throughput recorded in
``benchmarks/results/service.json``); the figures say which rate was asked for and which was reached.

Run from the repository root:  python -m benchmarks.soak [--duration 600] [--clients 16] [--rate RPS]
Smoke run (tiny bundle and banks, 8 s of load with one rebuild; result in a temporary folder):
    python -m benchmarks.soak --smoke
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.acquisition import GATHER_SHAPE
from seisbind.descriptors import DESCRIPTOR_NAMES, compute_descriptors
from seisbind.npy import npy_bytes
from seisbind.provenance import portable_path

from benchmarks._common import RESULTS_DIR, add_output_args, write_result
from benchmarks._serving import (
    DEFAULT_BUNDLE,
    JSON_HEADERS,
    NPY_HEADERS,
    TINY_BUNDLE,
    BenchmarkServer,
    call,
    export_default_bundle,
    make_bank,
    percentiles_ms,
)
from index.build import build_index


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", type=Path, default=None,
                   help="encoder bundle (default: the benchmark-size architecture, untrained, exported)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    p.add_argument("--rate", type=float, default=None,
                   help="target requests per second over all clients (default: throughput_rps.16 of "
                        "benchmarks/results/service.json; 0: as fast as the clients go)")
    p.add_argument("--rebuild-every", type=float, default=150.0,
                   help="seconds between the starts of admin rebuilds (the first at half of it)")
    p.add_argument("--bank-size", type=int, default=1000, help="models in each of the two banks")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--no-write", action="store_true", help="print the figures without writing the result file")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.duration, args.clients, args.rebuild_every, args.bank_size = 8.0, 4, 6.0, 40
        args.rate = 0.0 if args.rate is None else args.rate
    return args


def request_mix(seed: int) -> list[tuple[str, str, bytes, dict[str, str], bool, float]]:
    """(name, path, body, headers, valid, weight) of the requests the clients draw from."""
    rng = np.random.default_rng(seed)
    one = (rng.standard_normal(GATHER_SHAPE) * 5).astype(np.float32)
    four = (rng.standard_normal((4, *GATHER_SHAPE)) * 5).astype(np.float32)
    desc = dict(zip(DESCRIPTOR_NAMES, compute_descriptors(np.full((70, 70), 3000.0, np.float32)
                                                          + np.arange(70)[:, None] * 20.0)[0].tolist()))
    return [
        ("retrieve_npy", "/retrieve?k=10", npy_bytes(one), NPY_HEADERS, True, 0.45),
        ("retrieve_npy_batch4", "/retrieve?k=5", npy_bytes(four), NPY_HEADERS, True, 0.10),
        ("retrieve_json", "/retrieve", json.dumps({"gathers": np.round(one.astype(np.float64), 3).tolist(),
                                                   "k": 10}).encode(), JSON_HEADERS, True, 0.05),
        ("infer_descriptors", "/infer-descriptors?k=5&weighting=similarity", npy_bytes(one), NPY_HEADERS, True, 0.15),
        ("retrieve_by_descriptors", "/retrieve-by-descriptors", json.dumps({"descriptors": desc, "k": 10}).encode(),
         JSON_HEADERS, True, 0.15),
        ("bad_shape", "/retrieve", npy_bytes(one[:, :999]), NPY_HEADERS, False, 0.05),
        ("bad_content_type", "/retrieve", b"hello", {"Content-Type": "text/plain"}, False, 0.05),
        *hostile_mix(one, desc),
    ]


def hostile_mix(one: np.ndarray, desc: dict[str, float]) -> list[tuple[str, str, bytes, dict[str, str], bool, float]]:
    """What a hostile or careless user sends (issue 19): refused with a 4xx, or answered with a warning."""
    many_lists = b'{"gathers": [' + b",".join([b"[]"] * 1_400_000) + b"]}"  # 4.2 MB: 1.4 M lists with json.loads
    flat_zeros = b'{"gathers": [' + b",".join([b"0.0"] * 1_000_000) + b"]}"  # 4 MB: 1 M floats with json.loads
    zero, loud = np.zeros_like(one), one * 1e6
    return [
        ("warned_amplitudes", "/retrieve?k=5", npy_bytes(one * 8.0), NPY_HEADERS, True, 0.03),
        ("no_signal", "/retrieve", npy_bytes(zero), NPY_HEADERS, False, 0.02),
        ("loud_amplitudes", "/infer-descriptors", npy_bytes(loud), NPY_HEADERS, False, 0.02),
        ("json_empty_lists", "/retrieve", many_lists, JSON_HEADERS, False, 0.01),
        ("json_flat_zeros", "/retrieve", flat_zeros, JSON_HEADERS, False, 0.01),
        ("json_boolean", "/retrieve", json.dumps({"gathers": [[True] * 70] * 1000}).encode(), JSON_HEADERS, False,
         0.01),
        ("unknown_query", "/retrieve?K=1&include_model=true", npy_bytes(one), NPY_HEADERS, False, 0.02),
        ("implausible_descriptors", "/retrieve-by-descriptors",
         json.dumps({"descriptors": desc | {"v_mean": 1e9}, "k": 5}).encode(), JSON_HEADERS, False, 0.02),
        ("inconsistent_descriptors", "/retrieve-by-descriptors",
         json.dumps({"descriptors": desc | {"v_min": desc["v_max"] + 100.0}, "k": 5}).encode(), JSON_HEADERS, False,
         0.01),
        ("admin_malformed_no_token", "/admin/rebuild-index", b"{not json", JSON_HEADERS, False, 0.01),
    ]


def default_rate() -> float:
    """The 16-client throughput the service benchmark recorded (requests per second)."""
    path = RESULTS_DIR / "service.json"
    try:
        return float(json.loads(path.read_text())["throughput_rps"]["16"])
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"--rate not given and no throughput_rps.16 in {path} ({e}); run python -m "
                         "benchmarks.service first or pass --rate") from e


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.rate is None:
        args.rate = default_rate()
    token = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="seisbind-soak-") as tmp:
        work = args.work or Path(tmp)
        encoders = args.encoders or export_default_bundle(work / "bundle", tiny=args.smoke)
        banks = work / "banks"
        make_bank(banks / "bank_a", args.bank_size, seed=0)
        make_bank(banks / "bank_b", args.bank_size, seed=1)
        index_root = work / "index"
        build_index(encoders, banks / "bank_a", index_root, index_type="auto")
        with BenchmarkServer.launch(encoders, index_root, work / "server.log",
                                    {"SEISBIND_ADMIN_TOKEN": token, "SEISBIND_BANK_ROOT": str(banks)}) as server:
            figures = soak(server, args, token)
    figures["bundle"] = (portable_path(args.encoders) if args.encoders else TINY_BUNDLE if args.smoke else
                         DEFAULT_BUNDLE)
    return figures


def soak(server: BenchmarkServer, args: argparse.Namespace, token: str) -> dict[str, Any]:
    mix = request_mix(0)
    weights = np.array([m[5] for m in mix])
    weights /= weights.sum()
    latencies: dict[str, list[float]] = defaultdict(list)
    failures: list[str] = []
    counts: dict[str, int] = defaultdict(int)
    versions: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()
    start = time.perf_counter()
    issued = [0]

    def wait_for_slot() -> None:
        """Pace all clients together to args.rate requests per second (no pacing when it is 0)."""
        if args.rate <= 0:
            return
        with lock:
            slot = start + issued[0] / args.rate
            issued[0] += 1
        delay = slot - time.perf_counter()
        if delay > 0:
            stop.wait(delay)

    def client(i: int) -> None:
        rng = np.random.default_rng(100 + i)
        conn = server.connection()
        while not stop.is_set():
            wait_for_slot()
            if stop.is_set():
                break
            name, path, body, headers, valid, _ = mix[rng.choice(len(mix), p=weights)]
            t = time.perf_counter()
            try:
                status, data = call(conn, "POST", path, body, headers)
            except OSError as e:
                with lock:
                    failures.append(f"{name}: {e!r}")
                conn.close()
                conn = server.connection()
                continue
            took = time.perf_counter() - t
            ok = status == 200 if valid else 400 <= status < 500
            with lock:
                counts[name] += 1
                if not ok:
                    failures.append(f"{name}: HTTP {status} {data[:200]!r}")
                elif valid:
                    latencies[name].append(took)
                    versions.add(json.loads(data)["index_version"])
        conn.close()

    rebuilds: list[dict[str, Any]] = []

    def rebuilder() -> None:
        auth = {"Authorization": f"Bearer {token}", **JSON_HEADERS}
        bank = "bank_b"
        while not stop.wait(args.rebuild_every if rebuilds else args.rebuild_every / 2):
            status, data = server.request("POST", "/admin/rebuild-index",
                                          json.dumps({"bank": bank, "index_type": "auto"}).encode(), auth)
            if status != 202:
                failures.append(f"rebuild: HTTP {status} {data[:200]!r}")
                continue
            job_id = json.loads(data)["job_id"]
            while True:
                job = json.loads(server.request("GET", f"/admin/jobs/{job_id}", headers=auth)[1])
                if job["state"] in ("succeeded", "failed"):
                    break
                time.sleep(0.5)
            rebuilds.append(job)
            if job["state"] != "succeeded":
                failures.append(f"rebuild {bank}: {job['error']}")
            bank = "bank_a" if bank == "bank_b" else "bank_b"

    rss: list[tuple[float, int]] = []
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    threads.append(threading.Thread(target=rebuilder, daemon=True))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - t0 < args.duration:
        rss.append((time.monotonic() - t0, server.rss_bytes()))
        time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(300)
    duration = time.monotonic() - t0
    assert server.proc.poll() is None, "the server died"

    valid_all = [x for name, xs in latencies.items() for x in xs]
    p = percentiles_ms(valid_all)
    times = np.array([t for t, _ in rss])
    mem = np.array([m for _, m in rss], np.float64)
    early = mem[(times >= 0.1 * args.duration) & (times < 0.2 * args.duration)]
    late = mem[times >= 0.9 * args.duration]
    growth = float(np.median(late) / np.median(early) - 1.0) if len(early) and len(late) else None
    return {
        "duration_s": round(duration, 1),
        "requests": int(sum(counts.values())),
        "target_rate_rps": args.rate, "achieved_rate_rps": round(sum(counts.values()) / duration, 2),
        "failed": len(failures),
        "p50_ms": p["p50_ms"], "p99_ms": p["p99_ms"],
        "rss_growth_fraction": round(growth, 4) if growth is not None else None,
        "rebuilds": sum(1 for j in rebuilds if j["state"] == "succeeded"),
        "rebuilds_attempted": len(rebuilds),
        "index_versions_seen": len(versions),
        "requests_by_kind": dict(counts),
        "latency_by_kind": {name: percentiles_ms(xs) for name, xs in latencies.items() if xs},
        "rss_mb": {"start": round(mem[0] / 2**20, 1), "early_median": round(float(np.median(early)) / 2**20, 1)
                   if len(early) else None, "end": round(mem[-1] / 2**20, 1), "max": round(mem.max() / 2**20, 1)},
        "failures_sample": failures[:10],
        "clients": args.clients, "rebuild_every_s": args.rebuild_every, "bank_size": args.bank_size,
        "notes": "p50/p99 over all valid requests of the mix (client-side wall time); rss_growth_fraction compares "
                 "the server's median RSS over the last 10 % of the run with that over 10-20 %",
    }


if __name__ == "__main__":
    ARGS = parse_args()
    result = main(ARGS)
    print(json.dumps(result, indent=1))
    if not ARGS.no_write:
        print("wrote", write_result("soak", result, ARGS.out, ARGS.smoke))
