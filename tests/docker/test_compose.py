"""The Docker deployment. ``scripts/compose_smoke.sh`` (build the CPU images, ``docker compose up``, wait for
/readyz, a real /retrieve with a .npy body, HEALTHCHECK, admin token secret, ``down -v``) runs only when
SEISBIND_DOCKER_TESTS=1: it needs a Docker engine and takes minutes. Where ../shared/scripts/docker-sandbox.sh
exists (this project's machines: a docker client, no engine, no registry) it runs that first
(SEISBIND_DOCKER_SANDBOX=0/1 forces it off/on). The other checks here need no Docker: the settings the images
and compose file pass exist in the service's Settings, the entry point refuses an empty volume, and the
HEALTHCHECK script tells a live service from a dead one."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.server_process import free_port
from service.core.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKER_FILES = [REPO / "docker-compose.yml", REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.gpu",
                REPO / "docker" / "entrypoint.sh"]
NOT_SERVICE_SETTINGS = {
    "SEISBIND_BASE_IMAGE", "SEISBIND_CUDA_BASE_IMAGE", "SEISBIND_TORCH_INDEX_URL", "SEISBIND_QUICKSTART_PRESET",
    "SEISBIND_THREADS", "SEISBIND_GPU_PORT", "SEISBIND_ADMIN_TOKEN_PATH", "SEISBIND_REFINER_THREADS",
}
"""Variables of the compose file and images that are not service settings (build and bootstrap knobs)."""


SANDBOX_SCRIPT = REPO.parent / "shared" / "scripts" / "docker-sandbox.sh"


def use_sandbox() -> bool:
    """SEISBIND_DOCKER_SANDBOX=1/0 forces it on/off; by default on where the sandbox script exists (this project's
    machines: no engine, no registry; the script is idempotent and quick once the engine runs)."""
    flag = os.environ.get("SEISBIND_DOCKER_SANDBOX")
    if flag in ("0", "1"):
        return flag == "1"
    return SANDBOX_SCRIPT.is_file()


@pytest.mark.docker
@pytest.mark.timeout(3600)
@pytest.mark.skipif(os.environ.get("SEISBIND_DOCKER_TESTS") != "1",
                    reason="builds images and runs docker compose (minutes); set SEISBIND_DOCKER_TESTS=1")
def test_compose_stack_serves_a_real_retrieve() -> None:
    """The whole stack (bootstrap, api, redis, two refiner workers): /retrieve, and a refinement job submitted with
    .npy bytes, polled to completion, whose refined model is closer to the truth than its start."""
    cmd = ["bash", str(REPO / "scripts" / "compose_smoke.sh")] + (["--sandbox"] if use_sandbox() else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3500)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert "/retrieve: 200, top-5" in proc.stderr and "OK: compose stack served /retrieve" in proc.stderr, tail
    assert "api container hardened: uids 10001" in proc.stderr, tail
    assert "refinement workers registered: 2" in proc.stderr, tail
    m = re.search(r"/refine: job \w+ succeeded; MAE to the truth: start ([0-9.]+) m/s, refined ([0-9.]+) m/s",
                  proc.stderr)
    assert m and float(m.group(2)) < float(m.group(1)), tail


def test_refinement_services_are_wired() -> None:
    """redis: Debian's redis-server on the local base image, appending to its own volume; refiner: the torch
    (bootstrap) image running refine-worker on it; the API told where the queue is."""
    compose = (REPO / "docker-compose.yml").read_text()
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM base AS redis\n(?:.*\n)*?.*apt-get install -y --no-install-recommends redis-server",
                     dockerfile, re.M)
    assert '"--appendonly", "yes"' in dockerfile and "- seisbind-redis:/data" in compose
    assert re.search(r"^FROM bootstrap AS refiner\n(?:.*\n)*?CMD \[\"refine-worker\"\]", dockerfile, re.M)
    assert compose.count("SEISBIND_REDIS_URL: redis://redis:6379/0") == 2  # the serving anchor and the refiner
    assert 'command: ["refine-worker", "--threads"' in compose
    assert dockerfile.rstrip().splitlines()[-1] == 'CMD ["serve"]'  # the CPU serving image is still the last stage


def test_service_variables_of_the_deployment_are_settings() -> None:
    fields = {f"SEISBIND_{name.upper()}" for name in Settings.model_fields}
    for path in DOCKER_FILES:
        names = set(re.findall(r"\bSEISBIND_[A-Z_]+\b", path.read_text()))
        unknown = sorted(names - fields - NOT_SERVICE_SETTINGS)
        assert not unknown, f"{path.name} sets {unknown}, which the service does not read"
    compose = (REPO / "docker-compose.yml").read_text()
    assert "SEISBIND_ADMIN_TOKEN_FILE: /run/secrets/admin_token" in compose
    assert "condition: service_completed_successfully" in compose and "driver: nvidia" in compose


def test_every_container_is_hardened() -> None:
    """Non-root, read-only root filesystem with a tmpfs /tmp, no capabilities, no-new-privileges: one anchor that
    the bootstrap and both serving services merge (the smoke test checks the running api container)."""
    compose = (REPO / "docker-compose.yml").read_text()
    anchor = re.search(r"^x-hardening: &hardening\n((?:  .*\n|    .*\n)+)", compose, re.M)
    assert anchor, "docker-compose.yml has no x-hardening anchor"
    block = anchor.group(1)
    for line in ('user: "10001:10001"', "read_only: true", "- /tmp:", "cap_drop: [ALL]", "- no-new-privileges:true"):
        assert line in block, f"x-hardening lacks {line!r}"
    services = re.search(r"^services:\n(.*?)^\S", compose, re.M | re.S).group(1)
    blocks = dict(re.findall(r"^  ([a-z-]+):\n((?:    .*\n|\n)+)", services, re.M))
    assert set(blocks) == {"bootstrap", "api", "api-gpu", "redis", "refiner"}, set(blocks)
    assert all("<<: *hardening" in blocks[s] for s in ("bootstrap", "redis", "refiner"))
    serve = re.search(r"^x-serve: &serve\n((?:  .*\n)+)", compose, re.M).group(1)
    assert "<<: *hardening" in serve and all("<<: *serve" in blocks[s] for s in ("api", "api-gpu"))
    for name in ("Dockerfile", "Dockerfile.gpu"):
        users = re.findall(r"^USER (\S+)", (REPO / "docker" / name).read_text(), re.M)
        assert users and all(u == "seisbind" for u in users), (name, users)


def test_serving_image_installs_the_hash_checked_lock() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements/serve-cpu.lock" in dockerfile
    assert "COPY requirements/serve-cpu.lock" in dockerfile and 'pip install ".[cpu]"' not in dockerfile
    assert "!requirements/serve-cpu.lock" in (REPO / ".dockerignore").read_text().splitlines()


def test_entrypoint_refuses_an_empty_volume(tmp_path: Path) -> None:
    env = {**os.environ, "SEISBIND_ENCODERS": str(tmp_path / "bundle"), "SEISBIND_INDEX_ROOT": str(tmp_path / "idx"),
           "SEISBIND_HOST": "127.0.0.1", "SEISBIND_PORT": "1"}
    proc = subprocess.run(["sh", str(REPO / "docker" / "entrypoint.sh"), "serve"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert f"{tmp_path / 'bundle'}/manifest.json is missing; populate the volume first" in proc.stderr


@pytest.fixture()
def healthz_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_script(healthz_server: int) -> None:
    script = str(REPO / "docker" / "healthcheck.py")

    def check(port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "SEISBIND_PORT": str(port)})

    assert check(healthz_server).returncode == 0
    dead = check(free_port())
    assert dead.returncode == 1 and "/healthz" in dead.stderr
