"""Shared pieces of the service tests: a real ``seisbind serve`` (or uvicorn) process on a free localhost port (the
harness of ``cli.server_process``, shared with the benchmarks), request bodies, and the error-body check. Not a test
module (no ``test_`` prefix)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from seisbind.npy import npy_bytes as npy  # noqa: F401 - the test modules' .npy bodies

from cli.server_process import ServerProcess, free_port, serve_command

REPO = Path(__file__).resolve().parents[1]
G = (5, 1000, 70)
NPY = {"Content-Type": "application/x-npy"}
START_TIMEOUT = 120.0
TEST_ENV = {"SEISBIND_LOG_LEVEL": "info", "OMP_WAIT_POLICY": "PASSIVE"}
"""Settings of every test server unless a test gives its own: info logs (tests read them), and OpenMP threads that
sleep rather than spin while waiting (the test machine's cores are shared)."""


class Server(ServerProcess):
    """A service process (cli.server_process), its log, and the index root it serves when known."""

    index_root: Path | None = None

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kw)

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


def start_server(cmd: list[str], env: dict[str, str], log: Path, ready: bool = True,
                 preexec: Callable[[], None] | None = None) -> Server:
    """Start a service process (environment: ours without SEISBIND_*, plus the tests' defaults and ``env``; output
    appended to ``log``) and wait until /readyz (ready=True) or /healthz answers 200. The port is the command's
    --port or SEISBIND_PORT."""
    port = int(cmd[cmd.index("--port") + 1] if "--port" in cmd else env["SEISBIND_PORT"])
    return Server.start(cmd, port, log, {**TEST_ENV, **env}, ready_path="/readyz" if ready else "/healthz",
                        timeout=START_TIMEOUT, preexec=preexec)


def serve(bundle: Path, index_root: Path, log: Path, env: dict[str, str] | None = None, ready: bool = True,
          preexec: Callable[[], None] | None = None) -> Server:
    """``seisbind serve`` on a free port (see :func:`start_server`)."""
    server = start_server(serve_command(bundle, index_root, free_port()), env or {}, log, ready, preexec)
    server.index_root = index_root
    return server


def stop_server(server: Server) -> None:
    server.stop(timeout=20)


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


def assert_error(r: httpx.Response, status: int, fragment: str) -> dict:
    """An error response: the status, a JSON body naming the problem, the request id echoed."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status
    assert fragment.lower() in body["detail"].lower(), body["detail"]
    assert body["request_id"] and body["request_id"] == r.headers["X-Request-ID"]
    return body
