"""Faults around the index, against real uvicorn processes, real ONNX encoders and real FAISS (issue 7, item 3).

* kill -9 of the service in the middle of an admin rebuild, then a restart;
* an index root that fills up (a tiny tmpfs, or a file-size limit where mounting is not allowed) and one that is
  read-only (a read-only remount, or chmod, with a root service started without CAP_DAC_OVERRIDE) during a rebuild;
* a corrupt CURRENT version at start (bytes flipped, a file deleted, a manifest that disagrees with its files);
* replicas over a shared index root: CURRENT moved by another process is picked up without a restart.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from seisbind.descriptors import DESCRIPTOR_NAMES
from seisbind.npy import npy_bytes as npy

from index.build import build_index
from index.store import (
    CURRENT,
    DESCRIPTORS_FILE,
    EMBEDDINGS_FILE,
    ENTRIES_FILE,
    INDEX_FILE,
    MANIFEST,
    VELOCITY_FILE,
    IndexStore,
    is_version_id,
)
from tests.service_fixtures import NPY, REPO, Server, serve, stop_server

TOKEN = "faults-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL_A, SMALL_B, BIG = 200, 150, 4000
TMPFS_BYTES = 10 * 2**20
"""Holds one version of SMALL_A plus one of SMALL_B (about 4.2 + 3.1 MB), never one of BIG (80 MB)."""
FSIZE_LIMIT = 3_500_000
"""Without mount privileges: the service may write no file over this (SMALL_B's velocity store is 2.9 MB)."""
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1  # <linux/prctl.h>, <linux/capability.h>

pytestmark = pytest.mark.timeout(300)


# -- fixtures: bundle, banks -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) encoder bundle."""
    import torch

    from model.export import export_untrained_bundle

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bundle") / "main"
    export_untrained_bundle(out, seed=0)
    return out


@pytest.fixture(scope="module")
def bank_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_a (200 flatvel-a models), small_b (150 curvevel-a), big (4000 flatvel-a: a rebuild that takes a while)."""
    from model.families import generate

    root = tmp_path_factory.mktemp("banks")
    rng = np.random.default_rng(0)
    for name, family, n in (("small_a", "flatvel-a", SMALL_A), ("small_b", "curvevel-a", SMALL_B),
                            ("big", "flatvel-a", BIG)):
        (root / name).mkdir()
        np.save(root / name / "model1.npy", generate(family, n, rng))
    return root


def build(bundle: Path, bank: Path, root: Path) -> str:
    """A new verified version of ``bank`` under ``root``, made current (what `seisbind build-index` does)."""
    return build_index(bundle, bank, root, index_type="flat", verify_sample=20, intra_op_threads=1)


# -- service processes -----------------------------------------------------------------------------------------

def start_server(bundle: Path, index_root: Path, log: Path, bank_root: Path | None = None, ready: bool = True,
                 env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None) -> Server:
    """``seisbind serve`` on a free port with this module's settings; waits for /readyz (ready=True) or /healthz."""
    full_env = {"SEISBIND_ADMIN_TOKEN": TOKEN, "SEISBIND_ORT_INTRA_OP_THREADS": "1",
                "SEISBIND_REBUILD_INTRA_OP_THREADS": "1", "SEISBIND_ENCODE_WORKERS": "1",
                "SEISBIND_INDEX_POLL_S": "0", **(env or {})}
    if bank_root is not None:
        full_env["SEISBIND_BANK_ROOT"] = str(bank_root)
    return serve(bundle, index_root, log, full_env, ready, preexec)


GATHER = npy(np.round(np.random.default_rng(0).standard_normal((5, 1000, 70)) * 5, 3).astype(np.float32))


def served_version(server: Server) -> str:
    """The index version a real query is answered from (and /v1/info agrees)."""
    with server.client() as c:
        r = c.post("/retrieve", content=GATHER, headers=NPY, params={"k": 3})
        assert r.status_code == 200, r.text
        info = c.get("/v1/info").json()
    assert len(r.json()["results"][0]["neighbors"]) == 3
    assert info["index_version"] == r.json()["index_version"]
    return r.json()["index_version"]


def rebuild(server: Server, bank: str, timeout: float = 180.0) -> dict:
    """POST /admin/rebuild-index and wait for the job to finish; returns GET /admin/jobs/{id}."""
    with server.client() as c:
        r = c.post("/admin/rebuild-index", json={"bank": bank, "index_type": "flat"}, headers=AUTH)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = c.get(f"/admin/jobs/{job_id}", headers=AUTH).json()
            if job["state"] in ("succeeded", "failed"):
                return job
            time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def leftovers(root: Path) -> list[str]:
    """Everything in an index root other than complete versions and CURRENT (temporary folders, lock files)."""
    return sorted(p.name for p in root.iterdir() if p.name != CURRENT and not is_version_id(p.name))


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x5A
    path.write_bytes(bytes(data))


# -- a) kill -9 during an admin rebuild ------------------------------------------------------------------------

def test_kill_during_rebuild_then_restart_serves_previous_version(bundle: Path, bank_root: Path,
                                                                  tmp_path: Path) -> None:
    root = tmp_path / "index"
    v1 = build(bundle, bank_root / "small_a", root)
    server = start_server(bundle, root, tmp_path / "first.log", bank_root)
    try:
        with server.client() as c:
            job_id = c.post("/admin/rebuild-index", json={"bank": "big", "index_type": "flat"},
                            headers=AUTH).json()["job_id"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job = c.get(f"/admin/jobs/{job_id}", headers=AUTH).json()
                if job["progress"] > 0 or job["state"] in ("succeeded", "failed"):
                    break
                time.sleep(0.01)
        os.kill(server.proc.pid, signal.SIGKILL)  # in the middle of embedding the bank
        assert server.proc.wait(10) == -signal.SIGKILL
    finally:
        stop_server(server)
    assert job["state"] == "running" and 0 < job["progress"] < 0.5, job
    left = leftovers(root)
    assert any(n.startswith(".buildlock-") for n in left), left
    building = [root / n for n in left if n.startswith(".building-")]
    assert building and (building[0] / VELOCITY_FILE).is_file() and not (building[0] / MANIFEST).exists()
    store = IndexStore(root)
    assert store.current() == v1 and store.versions() == [v1]  # nothing half-written looks like a version

    server = start_server(bundle, root, tmp_path / "second.log", bank_root)
    try:
        assert served_version(server) == v1
        with server.client() as c:
            info = c.get("/v1/info").json()
        assert info["count"] == SMALL_A and info["current_version"] == v1 and info["current_refused"] is None
        assert leftovers(root) == []  # the dead build's folder and lock were cleaned up at start
        assert any("interrupted builds" in x["msg"] for x in server.log_lines())
        job = rebuild(server, "small_b")
        assert job["state"] == "succeeded", job
        assert served_version(server) == job["version"] == store.current() != v1
        assert store.versions() == [v1, job["version"]] and leftovers(root) == []
    finally:
        stop_server(server)


# -- b) a full and a read-only index root during a rebuild -----------------------------------------------------

def _mount_allowed() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN); SEISBIND_TEST_NO_MOUNT=1 says no."""
    if os.environ.get("SEISBIND_TEST_NO_MOUNT") == "1" or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/seisbind-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


def _drop_dac_override() -> None:
    """preexec_fn: take CAP_DAC_OVERRIDE out of the bounding set, so that a service running as root obeys file modes
    after exec (a root process's capabilities are the bounding set)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


class FaultyRoot:
    """An index root that can be filled up and made read-only.

    With mount privileges: the root is on a tmpfs of TMPFS_BYTES (full: ENOSPC, for real), made read-only by a
    remount (EROFS, like a read-only volume). Without: the service gets a file-size limit (EFBIG, the closest
    honest stand-in for a full disk), and the root is made read-only by chmod; a service running as root is started
    without CAP_DAC_OVERRIDE, so that the file mode binds it too.
    """

    def __init__(self, base: Path) -> None:
        self.mounted = _mount_allowed()
        self.mount = base / "mnt"
        self.mount.mkdir()
        if self.mounted:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(self.mount)],
                           check=True)
        self.root = self.mount / "index"
        self.root.mkdir()
        self.read_only_works = self.mounted or self._chmod_binds(base)

    @property
    def full_error(self) -> str:
        return "no space left on the device" if self.mounted else "over the size limit"

    def preexec(self) -> None:
        """Run in the service process before exec (see the class docstring)."""
        if not self.mounted:
            resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
            if os.geteuid() == 0:
                try:
                    _drop_dac_override()
                except OSError:  # no CAP_SETPCAP: then chmod does not bind the service (see read_only_works)
                    pass

    def _chmod_binds(self, base: Path) -> bool:
        """Whether a process started like the service cannot write into a folder of mode 0555."""
        probe = base / "probe"
        probe.mkdir(mode=0o555)
        try:
            r = subprocess.run([sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"], preexec_fn=self.preexec,
                               capture_output=True, text=True)
            return r.returncode != 0 and "PermissionError" in r.stderr
        finally:
            probe.chmod(0o755)

    def set_read_only(self, read_only: bool) -> None:
        if self.mounted:
            opts = "remount,ro" if read_only else "remount,rw"
            subprocess.run(["mount", "-o", opts, str(self.mount)], check=True)
        else:
            self.root.chmod(0o555 if read_only else 0o755)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.mount)], check=True)


@pytest.fixture(scope="module")
def faulty(bundle: Path, bank_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultyRoot,
                                                                                                       Server]]:
    """A service over a FaultyRoot holding one version of small_a; old versions are pruned (SEISBIND_INDEX_KEEP=1)."""
    base = tmp_path_factory.mktemp("faulty")
    faulty_root = FaultyRoot(base)
    server = None
    try:
        build(bundle, bank_root / "small_a", faulty_root.root)
        server = start_server(bundle, faulty_root.root, base / "service.log", bank_root,
                              env={"SEISBIND_INDEX_KEEP": "1"}, preexec=faulty_root.preexec)
        yield faulty_root, server
    finally:
        if server is not None:
            stop_server(server)
        faulty_root.close()


def assert_failed_cleanly(server: Server, root: Path, job: dict, before: str, fragments: tuple[str, ...]) -> None:
    """The job failed with a clear error, the old version still serves, nothing half-written is left."""
    assert job["state"] == "failed" and job["version"] is None, job
    for fragment in fragments:
        assert fragment in job["error"], job["error"]
    assert served_version(server) == before
    store = IndexStore(root)
    assert store.current() == before and store.versions() == [before]
    assert leftovers(root) == []
    with server.client() as c:
        assert c.get("/readyz").status_code == 200


def test_full_index_root_fails_the_rebuild_cleanly(faulty: tuple[FaultyRoot, Server]) -> None:
    faulty_root, server = faulty
    before = served_version(server)
    job = rebuild(server, "big")  # 80 MB of velocity models: more than the root can take
    assert_failed_cleanly(server, faulty_root.root, job, before, ("IndexStoreError", faulty_root.full_error,
                                                                 "the current version is unchanged"))
    assert server.proc.poll() is None  # the process survived the full disk
    if faulty_root.mounted:  # the space the failed build used is free again
        assert shutil.disk_usage(faulty_root.mount).used < TMPFS_BYTES // 2
    job = rebuild(server, "small_b")  # a rebuild that fits works afterwards
    assert job["state"] == "succeeded", job
    assert served_version(server) == job["version"] == IndexStore(faulty_root.root).current()


def test_read_only_index_root_fails_the_rebuild_cleanly(faulty: tuple[FaultyRoot, Server]) -> None:
    faulty_root, server = faulty
    if not faulty_root.read_only_works:
        pytest.skip("no way to make a folder unwritable here: no mount privileges, and chmod does not bind the "
                    "service (root that cannot drop CAP_DAC_OVERRIDE)")
    before = served_version(server)
    faulty_root.set_read_only(True)
    try:
        job = rebuild(server, "small_b")
        problem = "read-only file system" if faulty_root.mounted else "no permission to write"
        assert_failed_cleanly(server, faulty_root.root, job, before,
                              ("IndexStoreError", problem, str(faulty_root.root)))
    finally:
        faulty_root.set_read_only(False)
    job = rebuild(server, "small_b")
    assert job["state"] == "succeeded", job
    assert served_version(server) == job["version"]


# -- c) a corrupt CURRENT version at start ---------------------------------------------------------------------

def test_corrupt_current_is_refused_and_the_previous_verified_version_serves(bundle: Path, bank_root: Path,
                                                                             tmp_path: Path) -> None:
    root = tmp_path / "index"
    v1 = build(bundle, bank_root / "small_a", root)
    v2 = build(bundle, bank_root / "small_b", root)
    v3 = build(bundle, bank_root / "small_a", root)
    flip_byte(root / v2 / EMBEDDINGS_FILE)  # the previous version is corrupt too
    flip_byte(root / v3 / INDEX_FILE)  # CURRENT
    server = start_server(bundle, root, tmp_path / "service.log", env={"SEISBIND_INDEX_POLL_S": "0.2"})
    try:
        assert served_version(server) == v1
        with server.client() as c:
            ready = c.get("/readyz")
            info = c.get("/v1/info").json()
        assert ready.status_code == 200
        for doc in (ready.json(), info):
            assert doc["index_version"] == v1 and doc["current_version"] == v3, doc
            assert f"{v3}/{INDEX_FILE}: sha256" in doc["current_refused"] and "refusing" in doc["current_refused"]
        assert info["count"] == SMALL_A and info["ready"] is True
        assert server.errors(v3, INDEX_FILE, "refused") and server.errors(v2, EMBEDDINGS_FILE, "refused")
        time.sleep(2.0)  # ten checks of CURRENT: the refused version is not retried in a tight loop
        assert len(server.errors(v3, "refused")) == 1, server.errors(v3)
        assert served_version(server) == v1
    finally:
        stop_server(server)
    assert IndexStore(root).current() == v3  # the service never rewrites CURRENT (it may be a shared volume)


def test_no_verified_version_leaves_the_service_unready(bundle: Path, bank_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    v1 = build(bundle, bank_root / "small_a", root)
    v2 = build(bundle, bank_root / "small_b", root)
    manifest = (root / v1 / MANIFEST).read_text()  # v1's manifest disagrees with its descriptors file
    want = json.loads(manifest)["files"][DESCRIPTORS_FILE]
    (root / v1 / MANIFEST).write_text(manifest.replace(want, want[::-1]))
    (root / v2 / VELOCITY_FILE).unlink()  # CURRENT lost a file
    server = start_server(bundle, root, tmp_path / "service.log", ready=False)
    try:
        with server.client() as c:
            ready = c.get("/readyz")
            assert ready.status_code == 503, ready.text
            body = ready.json()
            assert body["ready"] is False and body["index_version"] is None and body["current_version"] == v2
            assert f"{v2}/{VELOCITY_FILE}: missing" in body["reason"] and "no earlier version" in body["reason"]
            for r in (c.post("/retrieve", content=GATHER, headers=NPY),
                      c.post("/infer-descriptors", content=GATHER, headers=NPY),
                      c.post("/retrieve-by-descriptors",
                             json={"descriptors": dict.fromkeys(DESCRIPTOR_NAMES, 2000.0)})):
                assert r.status_code == 503, r.text
                assert "not ready" in r.json()["detail"] or v2 in r.json()["detail"]
            info = c.get("/v1/info").json()
        assert info["ready"] is False and info["index_version"] is None and info["count"] == 0
        assert server.errors(v2, VELOCITY_FILE, "refused") and server.errors(v1, DESCRIPTORS_FILE, "refused")
    finally:
        stop_server(server)


# -- replicas: CURRENT moved by another process ----------------------------------------------------------------

def wait_for_version(server: Server, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.client() as c:
            if c.get("/v1/info").json()["index_version"] == version:
                return
        time.sleep(0.1)
    raise AssertionError(f"still serving {served_version(server)}, not {version}, after {timeout} s")


def test_current_moved_by_another_process_is_picked_up(bundle: Path, bank_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "index"
    v1 = build(bundle, bank_root / "small_a", root)
    server = start_server(bundle, root, tmp_path / "service.log", env={"SEISBIND_INDEX_POLL_S": "0.2"})
    try:
        assert served_version(server) == v1
        # another process builds a version and moves CURRENT: served without a restart
        proc = subprocess.run([sys.executable, "-m", "cli.main", "build-index", "--encoders", str(bundle),
                               "--bank", str(bank_root / "small_b"), "--out", str(root), "--type", "flat"],
                              cwd=REPO, capture_output=True, text=True, timeout=180,
                              env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        v2 = json.loads(proc.stdout.strip().splitlines()[-1])["version"]
        wait_for_version(server, v2)
        assert served_version(server) == v2
        with server.client() as c:
            assert c.get("/v1/info").json()["count"] == SMALL_B
            assert 'seisbind_index_swaps_total 1.0' in c.get("/metrics").text

        # a corrupt version made current: refused with an ERROR, the old one keeps serving, no tight retry loop
        scratch = tmp_path / "scratch"
        v3 = build(bundle, bank_root / "small_a", scratch)
        shutil.copytree(scratch / v3, root / v3)
        flip_byte(root / v3 / DESCRIPTORS_FILE, at=0.9)
        IndexStore(root).set_current(v3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not server.errors(v3):
            time.sleep(0.1)
        assert server.errors(v3, DESCRIPTORS_FILE, "refused")
        time.sleep(2.0)  # ten more checks
        assert len(server.errors(v3)) == 1, server.errors(v3)
        assert served_version(server) == v2
        with server.client() as c:
            ready = c.get("/readyz").json()
        assert ready["index_version"] == v2 and ready["current_version"] == v3
        assert DESCRIPTORS_FILE in ready["current_refused"]

        # a rollback by another process (CURRENT back to an older version) is followed too
        IndexStore(root).set_current(v1)
        wait_for_version(server, v1)
        with server.client() as c:
            ready = c.get("/readyz").json()
        assert ready["current_version"] == v1 and ready["current_refused"] is None
        assert served_version(server) == v1
    finally:
        stop_server(server)


def test_refused_version_is_retried_only_after_a_back_off(bundle: Path, bank_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher's schedule, in process (real ONNX sessions and FAISS, a fake clock): a refused version is not
    loaded again until its back-off has passed, the back-off doubles, and the version is served once it verifies."""
    import service.index_watch as index_watch
    from service.core.config import Settings
    from service.engine import Engine
    from service.metrics import ServiceMetrics

    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(index_watch, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    root = tmp_path / "index"
    v1 = build(bundle, bank_root / "small_a", root)
    engine = Engine(Settings(encoders=bundle, index_root=root, ort_intra_op_threads=1), ServiceMetrics())
    engine.load_current_index()
    watcher = index_watch.CurrentWatcher(engine, interval_s=1.0)
    loads: list[str] = []
    load_version = engine.load_version
    monkeypatch.setattr(engine, "load_version", lambda v: loads.append(v) or load_version(v))
    assert watcher.check() is None and loads == []  # CURRENT is what is served: nothing to load

    v2 = build(bundle, bank_root / "small_b", root)
    good = (root / v2 / ENTRIES_FILE).read_bytes()
    (root / v2 / ENTRIES_FILE).write_bytes(good.replace(b'"ids"', b'"idz"'))  # still valid JSON, wrong checksum
    assert watcher.check() is None and loads == [v2]
    assert engine.searcher is not None and engine.searcher.version == v1
    assert engine.current_version == v2 and ENTRIES_FILE in (engine.current_refused or "")
    first = index_watch.RETRY_FIRST_S
    for _ in range(10):  # checks within the back-off do not load it again
        clock.now += first / 20
        assert watcher.check() is None
    assert loads == [v2]
    clock.now += first / 2 + 1
    assert watcher.check() is None and loads == [v2, v2]  # retried once the back-off passed, refused again
    clock.now += first + 1
    assert watcher.check() is None and loads == [v2, v2]  # the back-off doubled
    (root / v2 / ENTRIES_FILE).write_bytes(good)  # repaired in place
    clock.now += first + 1
    assert watcher.check() == v2 and loads == [v2, v2, v2]
    assert engine.searcher.version == v2 and engine.current_refused is None


# -- the build lock: builds of other processes (other containers) are never cleaned up while alive ----------------

def test_a_live_build_of_another_process_is_never_cleaned_up(tmp_path: Path) -> None:
    """A build folder whose pid means nothing here (another container's pid namespace) is kept while its builder
    holds the lock, and cleaned up once the builder is gone."""
    root = tmp_path / "index"
    root.mkdir()
    folder = root / ".building-20260102T030405.123456Z-1a2b3c4d-999999"  # a pid that does not exist here
    folder.mkdir()
    (folder / VELOCITY_FILE).write_bytes(b"partial")
    lock = root / ".buildlock-20260102T030405.123456Z-1a2b3c4d-999999"
    lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(lock)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert IndexStore(root).clean_stale_builds() == []
        assert (folder / VELOCITY_FILE).exists() and lock.exists()
    finally:
        holder.kill()
        holder.wait(10)
    assert IndexStore(root).clean_stale_builds() == [folder.name, lock.name]
    assert list(root.iterdir()) == []
