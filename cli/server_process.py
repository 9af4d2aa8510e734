"""A real SeisBind service in a subprocess on localhost: the one harness the tests and the benchmarks start servers
with (``seisbind serve``, or any other command such as uvicorn's factory), wait for, and stop.

    with ServerProcess.serve(bundle, index_root, log=tmp / "server.log") as server:
        httpx.get(server.url + "/v1/info")

The process inherits this environment without its ``SEISBIND_*`` settings (so a developer's shell cannot change
what a test or benchmark measures), plus the ``env`` given; stdout and stderr are appended to a log file, whose
last lines every start-up error quotes.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

S = TypeVar("S", bound="ServerProcess")


class ServerStartError(RuntimeError):
    """The service exited, or did not answer 200 in time, while starting; the message quotes its log."""


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_command(encoders: Path, index_root: Path, port: int, host: str = HOST) -> list[str]:
    """``seisbind serve`` of ``encoders`` over ``index_root`` on ``host:port``, run as ``python -m cli.main``."""
    return [sys.executable, "-m", "cli.main", "serve", "--encoders", str(encoders), "--index", str(index_root),
            "--host", host, "--port", str(port)]


def service_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``SEISBIND_*`` variables, plus ``env``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("SEISBIND_")}
    out.update(env or {})
    return out


class ServerProcess:
    """A service process listening on ``host:port``, its output going to ``log``."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, host: str = HOST) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def start(cls: type[S], command: Sequence[str], port: int, log: Path, env: Mapping[str, str] | None = None, *,
              ready_path: str = "/readyz", timeout: float = START_TIMEOUT_S, host: str = HOST,
              preexec: Callable[[], None] | None = None, cwd: Path = REPO) -> S:
        """Run ``command`` (a server that will listen on ``host:port``) and return once ``ready_path`` answers 200.

        Raises ServerStartError, with the end of the log, if the process exits first or ``timeout`` s pass (the
        process is then stopped).
        """
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(command), cwd=cwd, env=service_env(env), stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=preexec)
        server = cls(proc, port, log, host)
        server.wait_until_up(ready_path, timeout)
        return server

    @classmethod
    def serve(cls: type[S], encoders: Path, index_root: Path, log: Path, env: Mapping[str, str] | None = None, *,
              port: int | None = None, ready_path: str = "/readyz", timeout: float = START_TIMEOUT_S,
              preexec: Callable[[], None] | None = None) -> S:
        """``seisbind serve`` on ``port`` (default: a free one), started as by :meth:`start`."""
        port = port or free_port()
        return cls.start(serve_command(encoders, index_root, port), port, log, env, ready_path=ready_path,
                         timeout=timeout, preexec=preexec)

    def wait_until_up(self, path: str = "/readyz", timeout: float = START_TIMEOUT_S) -> None:
        """Poll ``GET path`` until it answers 200; on exit of the process or timeout, stop it and raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"the service exited with code {self.proc.returncode} before {path} answered "
                                       f"200; end of {self.log}:\n{self.log_tail()}")
            if self.status(path) == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"the service did not answer 200 on {path} within {timeout:g} s; end of {self.log}:"
                               f"\n{self.log_tail()}")

    def status(self, path: str, timeout: float = 2.0) -> int | None:
        """HTTP status of ``GET path``, or None when nothing answers."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def running(self) -> bool:
        return self.proc.poll() is None

    def logs(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.logs()[-chars:]

    def rss_bytes(self) -> int:
        """Resident memory of the process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"VmRSS not found for process {self.proc.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` s; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
