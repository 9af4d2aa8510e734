"""Shared pieces of the service tests: a real ``seisbind serve`` (or uvicorn) process on a free localhost port,
request bodies, and the error-body check. Not a test module (no ``test_`` prefix)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
G = (5, 1000, 70)
NPY = {"Content-Type": "application/x-npy"}
START_TIMEOUT = 120.0


@dataclass
class Server:
    """A service process and where its stdout/stderr go."""

    proc: subprocess.Popen
    url: str
    log: Path
    index_root: Path | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kw)

    def logs(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def log_tail(self, n: int = 4000) -> str:
        return self.logs()[-n:]

    def log_lines(self) -> list[dict]:
        """The JSON log lines written so far."""
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def errors(self, *fragments: str) -> list[str]:
        """Messages of ERROR log lines that contain every fragment."""
        return [x["msg"] for x in self.log_lines()
                if x.get("level") == "error" and all(f in x["msg"] for f in fragments)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(bundle: Path, index_root: Path, port: int) -> list[str]:
    """``seisbind serve`` of ``bundle`` over ``index_root`` on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "seisbind.cli", "serve", "--encoders", str(bundle), "--index", str(index_root),
            "--host", "127.0.0.1", "--port", str(port)]


def start_server(cmd: list[str], env: dict[str, str], log: Path, ready: bool = True,
                 preexec: Callable[[], None] | None = None) -> Server:
    """Start a service process (environment: ours without SEISBIND_*, plus ``env``; output appended to ``log``) and
    wait until /readyz (ready=True) or /healthz answers 200. The port is the command's --port or SEISBIND_PORT."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SEISBIND_")}
    full_env.update({"SEISBIND_LOG_LEVEL": "info", "OMP_WAIT_POLICY": "PASSIVE", **env})
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=preexec)
    port = int(cmd[cmd.index("--port") + 1] if "--port" in cmd else env["SEISBIND_PORT"])
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT
    path = "/readyz" if ready else "/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + path, timeout=2.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"service not up after {START_TIMEOUT} s:\n{server.log_tail()}")


def serve(bundle: Path, index_root: Path, log: Path, env: dict[str, str] | None = None, ready: bool = True,
          preexec: Callable[[], None] | None = None) -> Server:
    """``seisbind serve`` on a free port (see :func:`start_server`)."""
    server = start_server(serve_command(bundle, index_root, free_port()), env or {}, log, ready, preexec)
    server.index_root = index_root
    return server


def stop_server(server: Server) -> None:
    if server.proc.poll() is not None:
        return
    server.proc.terminate()
    try:
        server.proc.wait(20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)


def small_service_files(root: Path, bank_size: int) -> tuple[Path, Path, Path]:
    """(bundle, bank root, index root) under ``root``: an untrained bundle, ``banks/bank_a`` with ``bank_size``
    flatvel-a models, and a flat index of it."""
    import torch

    from index.build import build_index
    from model.export import export_untrained_bundle
    from model.families import generate

    torch.set_num_threads(1)
    export_untrained_bundle(root / "bundle", seed=0)
    (root / "banks" / "bank_a").mkdir(parents=True)
    np.save(root / "banks" / "bank_a" / "model1.npy", generate("flatvel-a", bank_size, np.random.default_rng(0)))
    build_index(root / "bundle", root / "banks" / "bank_a", root / "index", index_type="flat")
    return root / "bundle", root / "banks", root / "index"


def gathers(n: int | None = None, seed: int = 0) -> np.ndarray:
    """Random but valid gathers, float32, rounded to 3 decimals so JSON bodies stay small."""
    shape = G if n is None else (n, *G)
    return np.round(np.random.default_rng(seed).standard_normal(shape) * 5, 3).astype(np.float32)


def as_json(g: np.ndarray) -> list:
    """Nested lists with short number reprs (float32 -> float64 adds digits); they cast back to the same float32."""
    return np.round(g.astype(np.float64), 3).tolist()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def assert_error(r: httpx.Response, status: int, fragment: str) -> dict:
    """An error response: the status, a JSON body naming the problem, the request id echoed."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status
    assert fragment.lower() in body["detail"].lower(), body["detail"]
    assert body["request_id"] and body["request_id"] == r.headers["X-Request-ID"]
    return body
