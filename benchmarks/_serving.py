"""Shared pieces of the service benchmarks (service.py, soak.py): a bundle and banks to serve, a ``seisbind serve``
process, lightweight HTTP calls and percentiles. No torch in this process: a bundle is exported in a subprocess."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NPY_HEADERS = {"Content-Type": "application/x-npy"}
JSON_HEADERS = {"Content-Type": "application/json"}

_EXPORT = """
import sys, torch
torch.set_num_threads(2)
from model.encoders import ModelConfig, create_model
from model.export import export_bundle
export_bundle(create_model(ModelConfig(), seed=0), sys.argv[1], training={"untrained": True, "seed": 0}, metrics={})
"""


def export_default_bundle(out: Path) -> Path:
    """The benchmark-size architecture, untrained (same compute as a trained bundle), exported in a subprocess."""
    subprocess.run([sys.executable, "-c", _EXPORT, str(out)], cwd=REPO, check=True)
    return out


def make_bank(out: Path, count: int, seed: int) -> Path:
    """A bank of ``count`` synthetic velocity models (half flatvel-a, half curvevel-a) in OpenFWI layout."""
    from model.families import generate  # numpy only
    from seisbind.openfwi import save_npy_atomic

    rng = np.random.default_rng(seed)
    models = np.concatenate([generate("flatvel-a", count // 2, rng), generate("curvevel-a", count - count // 2, rng)])
    for n, start in enumerate(range(0, count, 500), start=1):
        save_npy_atomic(out / "model" / f"model{n}.npy", models[start:start + 500])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@dataclass
class ServerProcess:
    """A ``seisbind serve`` subprocess on localhost."""

    proc: subprocess.Popen
    host: str
    port: int

    @classmethod
    def start(cls, encoders: Path, index_root: Path, env: dict[str, str] | None = None, log: Path | None = None,
              timeout: float = 180.0) -> ServerProcess:
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEISBIND_")}
        full_env.update({"SEISBIND_LOG_LEVEL": "warning", **(env or {})})
        out = open(log, "wb") if log else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, "-m", "seisbind.cli", "serve", "--encoders", str(encoders),
                                 "--index", str(index_root), "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        server = cls(proc, "127.0.0.1", port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"seisbind serve exited with {proc.returncode} (log: {log})")
            try:
                if server.request("GET", "/readyz")[0] == 200:
                    return server
            except OSError:
                pass
            time.sleep(0.3)
        server.stop()
        raise RuntimeError(f"seisbind serve not ready after {timeout:g} s (log: {log})")

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

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


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
