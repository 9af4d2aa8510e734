"""A real ``redis-server`` on a free localhost port, and ``seisbind refine-worker`` processes on it: the pieces of the
refinement-job tests. Not a test module (no ``test_`` prefix)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from cli.server_process import REPO, free_port, service_env

WORKER_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port>, its files in ``folder``; ``url`` for clients."""

    def __init__(self, folder: Path) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (scripts/test.sh installs Debian's redis-server where missing)"
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = folder / "redis.log"
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
                                      "--save", "", "--appendonly", "no", "--logfile", str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start; {self.log}: "
                                       f"{self.log.read_text() if self.log.exists() else ''}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class WorkerProcess:
    """``seisbind refine-worker`` on ``redis_url`` (heartbeat every second, abandoned after 2 s more), output in
    ``log``."""

    def __init__(self, redis_url: str, log: Path, name: str, heartbeat_s: int = 1, grace_s: int = 2) -> None:
        self.log, self.name = log, name
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "refine-worker", "--redis", redis_url, "--name", name,
                 "--heartbeat-s", str(heartbeat_s), "--grace-s", str(grace_s), "--maintenance-s", "1",
                 "--threads", "1"], cwd=REPO, env=service_env(WORKER_ENV), stdout=out, stderr=subprocess.STDOUT)

    def children(self) -> list[int]:
        """Process ids of its work horses (Linux /proc)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(x) for x in path.read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL the worker process only (as the OOM killer or a lost machine would); its work horse dies
        with it (PR_SET_PDEATHSIG)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # busy in a job: a warm shutdown waits for it; do not
                self.proc.kill()
                self.proc.wait(5)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
