"""Shared pieces of the benchmarks that index and serve (index.py, service.py, soak.py): an untrained bundle and
banks to index, a real ``seisbind serve`` process (the harness of ``cli.server_process``, shared with the tests),
lightweight HTTP calls and percentiles. No torch in this process: a bundle is exported in a subprocess."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cli.server_process import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[1]
NPY_HEADERS = {"Content-Type": "application/x-npy"}
JSON_HEADERS = {"Content-Type": "application/json"}
SERVER_ENV = {"SEISBIND_LOG_LEVEL": "warning"}
"""Settings of every benchmarked server besides those a benchmark gives (OpenMP's wait policy is left to the user)."""

_EXPORT = """
import sys, torch
torch.set_num_threads(2)
from model.config import ModelConfig
from model.export import export_untrained_bundle
variants = tuple(v for v in sys.argv[3].split(",") if v)
if sys.argv[2] == "tiny":
    export_untrained_bundle(sys.argv[1], seed=0, seismic_variants=variants)
else:
    export_untrained_bundle(sys.argv[1], seed=0, seismic_variants=variants, cfg=ModelConfig())
"""
DEFAULT_BUNDLE = "untrained, benchmark-size architecture (model.config.ModelConfig() defaults), seed 0"
TINY_BUNDLE = "untrained, tiny architecture (model.export.export_untrained_bundle, ModelConfig.tiny()), seed 0"


def export_default_bundle(out: Path, tiny: bool = False, seismic_variants: tuple[str, ...] = ()) -> Path:
    """The benchmark-size architecture, untrained (same compute as a trained bundle), exported in a subprocess;
    ``tiny``: the tests' small architecture instead (smoke runs); ``seismic_variants``: with these seismic graphs
    too (int8 calibrated on synthetic gathers: its speed is real, its accuracy means nothing untrained)."""
    subprocess.run([sys.executable, "-c", _EXPORT, str(out), "tiny" if tiny else "default", ",".join(seismic_variants)],
                   cwd=REPO, check=True)
    return out


def make_bank(out: Path, count: int, seed: int) -> Path:
    """A bank of ``count`` synthetic velocity models (half flatvel-a, half curvevel-a) in OpenFWI layout."""
    from seisbind.files import save_npy_atomic

    from model.families import generate  # numpy only

    rng = np.random.default_rng(seed)
    models = np.concatenate([generate("flatvel-a", count // 2, rng), generate("curvevel-a", count - count // 2, rng)])
    for n, start in enumerate(range(0, count, 500), start=1):
        save_npy_atomic(out / "model" / f"model{n}.npy", models[start:start + 500])
    return out


class BenchmarkServer(ServerProcess):
    """A ``seisbind serve`` process with the HTTP calls the benchmarks time (http.client, kept-alive connections)."""

    @classmethod
    def launch(cls, encoders: Path, index_root: Path, log: Path, env: dict[str, str] | None = None,
               timeout: float = 180.0) -> BenchmarkServer:
        """``seisbind serve`` on a free port with ``SERVER_ENV`` plus ``env``, once /readyz answers 200."""
        return cls.serve(encoders, index_root, log, {**SERVER_ENV, **(env or {})}, timeout=timeout)

    @classmethod
    def floor(cls, response: bytes, work: Path) -> BenchmarkServer:
        """The HTTP floor (benchmarks._http_floor): the service's server stack around an application that does no
        work and answers every request with ``response``."""
        (work / "floor-response.json").write_bytes(response)
        port = free_port()
        return cls.start([sys.executable, "-m", "benchmarks._http_floor", str(port), str(work / "floor-response.json")],
                         port, work / "server-floor.log", SERVER_ENV, ready_path="/")

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = self.connection()
        try:
            return call(conn, method, path, body, headers)
        finally:
            conn.close()

    def json(self, path: str) -> Any:
        status, data = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def stage_totals(self, endpoint: str = "/retrieve") -> dict[str, tuple[float, float]]:
        """Server-side seconds and request count of each stage so far (from /metrics): {stage: (sum, count)}."""
        status, text = self.request("GET", "/metrics")
        out: dict[str, list[float]] = {}
        for line in text.decode().splitlines():
            if line.startswith("seisbind_stage_seconds_") and f'endpoint="{endpoint}"' in line:
                name, value = line.rsplit(" ", 1)
                stage = name.split('stage="')[1].split('"')[0]
                if name.startswith("seisbind_stage_seconds_sum"):
                    out.setdefault(stage, [0.0, 0.0])[0] = float(value)
                elif name.startswith("seisbind_stage_seconds_count"):
                    out.setdefault(stage, [0.0, 0.0])[1] = float(value)
        return {k: (v[0], v[1]) for k, v in out.items()}


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on a kept-alive connection: (status, body)."""
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p99, min, max and count of latencies given in seconds, in ms."""
    a = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "min_ms": round(float(a.min()), 3), "max_ms": round(float(a.max()), 3), "n": int(len(a))}


def add_stage_delta(acc: dict[str, tuple[float, float]], before: dict[str, tuple[float, float]],
                    after: dict[str, tuple[float, float]]) -> None:
    """Add the stage seconds and counts between two ``stage_totals`` snapshots to ``acc``."""
    for stage, (s1, n1) in after.items():
        s0, n0 = before.get(stage, (0.0, 0.0))
        a0, c0 = acc.get(stage, (0.0, 0.0))
        acc[stage] = (a0 + s1 - s0, c0 + n1 - n0)


def stage_ms(totals: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean milliseconds per request of each stage from {stage: (seconds, count)}."""
    return {stage: round(1000 * s / n, 3) for stage, (s, n) in totals.items() if n > 0}
