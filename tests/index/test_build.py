"""Index builds end to end: bank -> verified version -> Searcher; atomicity, corruption, bundle mismatch, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seisbind.bundle import BundleError, EncoderBundle, OnnxEncoder, select_providers
from seisbind.descriptors import compute_descriptors
from seisbind.openfwi import OpenFWIError

from cli.main import app
from index.build import build_index
from index.searcher import Searcher
from index.store import (
    CURRENT,
    DESCRIPTORS_FILE,
    ENTRIES_FILE,
    INDEX_FILE,
    VELOCITY_FILE,
    BundleMismatchError,
    IndexStore,
    IndexStoreError,
)

REPO = Path(__file__).resolve().parents[2]


def layered_models(n: int, seed: int) -> np.ndarray:
    """Random layered velocity models [n, 1, 70, 70] float32 m/s (1500-4500, increasing-ish with depth)."""
    rng = np.random.default_rng(seed)
    v = np.empty((n, 1, 70, 70), np.float32)
    for i in range(n):
        cuts = np.sort(rng.choice(np.arange(5, 65), size=rng.integers(2, 6), replace=False))
        speeds = np.sort(rng.uniform(1500, 4500, len(cuts) + 1))
        column = np.repeat(speeds, np.diff(np.concatenate([[0], cuts, [70]])))
        tilt = rng.uniform(-3, 3) * np.arange(70) / 70
        v[i, 0] = np.clip(column[:, None] + 100 * tilt[None, :], 1500, 4500)
    return v


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two untrained encoder bundles with different weights (different bundle ids)."""
    from model.export import export_untrained_bundle

    base = tmp_path_factory.mktemp("bundles")
    export_untrained_bundle(base / "a", seed=0)
    export_untrained_bundle(base / "b", seed=1)
    return base / "a", base / "b"


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OpenFWI-layout bank of 300 models in two files; models 5..9 duplicate models 0..4."""
    folder = tmp_path_factory.mktemp("bank")
    (folder / "model").mkdir()
    v = layered_models(300, seed=3)
    v[5:10] = v[0:5]
    np.save(folder / "model" / "model1.npy", v[:200])
    np.save(folder / "model" / "model2.npy", v[200:])
    return folder


@pytest.fixture(scope="module")
def built(bundles: tuple[Path, Path], bank: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("indexes") / "root"
    return root, build_index(bundles[0], bank, root, index_type="flat")


def bank_models(bank: Path) -> np.ndarray:
    return np.concatenate([np.load(bank / "model" / "model1.npy"), np.load(bank / "model" / "model2.npy")])


def test_build_writes_a_complete_current_version(built: tuple[Path, str], bundles: tuple[Path, Path],
                                                  bank: Path) -> None:
    root, version = built
    assert IndexStore(root).current() == version
    s = Searcher.load(root, expected_bundle_id=EncoderBundle(bundles[0]).bundle_id)
    v = bank_models(bank)
    assert (s.version, s.count, s.dim) == (version, 300, 256)
    m = s.manifest.raw
    assert m["index"]["type"] == "flat" and m["bank"]["path"] == str(bank.resolve())
    assert len(m["bank"]["sha256"]) == 64 and m["created"] and m["verification"]["sample"] == 200
    assert set(m["files"]) == {INDEX_FILE, VELOCITY_FILE, "embeddings.npy", DESCRIPTORS_FILE, ENTRIES_FILE}
    assert s.ids[0] == "model/model1:0" and s.ids[250] == "model/model2:50"
    assert s.sources[250] == (str(bank / "model" / "model2.npy"), 50)
    np.testing.assert_allclose(s.descriptors, compute_descriptors(v))
    I = np.array([[0, 299], [17, 123]])
    np.testing.assert_array_equal(s.velocity_models(I), v[I])
    # A bank model's own embedding retrieves it (or its duplicate) at rank 1 with cosine ~1.
    enc = OnnxEncoder(bundles[0], "velocity")
    D, I = s.search(enc.encode(v[[3, 42, 299]]), k=5)
    assert I.dtype == np.int64 and D.dtype == np.float32 and D.shape == (3, 5)
    assert I[0, 0] in (3, 8) and list(I[1:, 0]) == [42, 299]
    np.testing.assert_allclose(D[:, 0], 1.0, atol=1e-4)
    assert np.all(np.diff(D, axis=1) <= 1e-6)


def test_search_rejects_bad_queries(built: tuple[Path, str]) -> None:
    s = Searcher.load(built[0])
    q = np.asarray(s.embeddings[:2])
    with pytest.raises(ValueError, match=r"shape \(2, 255\)"):
        s.search(q[:, :255], 3)
    with pytest.raises(ValueError, match=r"k=0: must be an integer in 1\.\.300"):
        s.search(q, 0)
    with pytest.raises(ValueError, match="k=301"):
        s.search(q, 301)
    with pytest.raises(ValueError, match="NaN"):
        s.search(np.full_like(q, np.nan), 3)
    with pytest.raises(TypeError, match="int32"):
        s.search(q.astype(np.int32), 3)
    with pytest.raises(ValueError, match="-1 marks a missing neighbour"):
        s.velocity_models(np.array([-1]))


def test_versions_are_kept_pruned_and_rolled_back(bundles: tuple[Path, Path], bank: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = build_index(bundles[0], bank / "model" / "model2.npy", root, keep=2, verify_sample=20)
    second = build_index(bundles[0], bank / "model" / "model2.npy", root, keep=2, verify_sample=20)
    store = IndexStore(root)
    assert store.versions() == [first, second] and store.current() == second
    store.set_current(first)  # rollback is a pointer change
    assert Searcher.load(root).version == first
    third = build_index(bundles[0], bank / "model" / "model2.npy", root, keep=2, verify_sample=20)
    assert store.current() == third and store.versions() == [second, third]
    assert sorted([first, second, third]) == [first, second, third]
    with pytest.raises(ValueError, match="not a version id"):
        store.version_dir("../etc")
    with pytest.raises(IndexStoreError, match="no such complete version"):
        store.set_current("20000101T000000.000000Z-00000000")


@pytest.mark.parametrize("name", [DESCRIPTORS_FILE, VELOCITY_FILE, INDEX_FILE, ENTRIES_FILE])
def test_corrupted_file_is_refused(bundles: tuple[Path, Path], bank: Path, tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    version = build_index(bundles[0], bank / "model" / "model2.npy", root, verify_sample=10)
    path = root / version / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IndexStoreError, match=rf"{name}: sha256 .* does not match .*refusing this version"):
        Searcher.load(root)
    path.unlink()
    with pytest.raises(IndexStoreError, match=rf"{name}: missing"):
        Searcher.load(root)


def test_missing_root_and_bad_manifest_are_clear_errors(built: tuple[Path, str], tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="no current index version"):
        Searcher.load(tmp_path / "nothing")
    (tmp_path / CURRENT).write_text("garbage\n")
    with pytest.raises(IndexStoreError, match="does not name a version"):
        Searcher.load(tmp_path)
    folder = tmp_path / "20000101T000000.000000Z-00000000"
    folder.mkdir()
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(IndexStoreError, match="manifest.json: not valid JSON"):
        Searcher.open(folder)


def test_index_of_another_bundle_is_refused(built: tuple[Path, str], bundles: tuple[Path, Path]) -> None:
    other = EncoderBundle(bundles[1]).bundle_id
    assert other != EncoderBundle(bundles[0]).bundle_id
    with pytest.raises(BundleMismatchError, match=rf"encoder bundle \w+, but the encoders in use are {other}"):
        Searcher.load(built[0], expected_bundle_id=other)


def test_killed_build_leaves_current_version_intact(built: tuple[Path, str], bundles: tuple[Path, Path],
                                                     bank: Path) -> None:
    root, version = built
    script = textwrap.dedent(f"""
        import os, signal
        from index.build import build_index
        def cb(fraction):
            if fraction > 0.3:
                os.kill(os.getpid(), signal.SIGKILL)
        build_index({str(bundles[1])!r}, {str(bank)!r}, {str(root)!r}, progress_cb=cb, batch_size=32)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p for p in root.iterdir() if p.name.startswith(".building-")]
    assert leftovers and (leftovers[0] / VELOCITY_FILE).exists()  # killed while embedding
    store = IndexStore(root)
    assert store.current() == version and store.versions() == [version]
    s = Searcher.load(root)
    assert s.version == version and s.count == 300
    store.prune(keep=5)  # the dead build's folder is cleaned up
    assert not any(p.name.startswith(".building-") for p in root.iterdir())
    assert store.current() == version


def test_bad_bank_is_refused_and_leaves_nothing(built: tuple[Path, str], bundles: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    root, version = built
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(OpenFWIError, match="no such file or folder"):
        build_index(bundles[0], tmp_path / "absent", root)
    np.save(tmp_path / "wrong.npy", np.ones((3, 70, 71), np.float32))
    with pytest.raises(OpenFWIError, match=r"wrong\.npy: shape is \(3, 70, 71\)"):
        build_index(bundles[0], tmp_path / "wrong.npy", root)
    v = layered_models(40, seed=9)
    v[37, 0, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", v)
    with pytest.raises(OpenFWIError, match=r"nan\.npy rows 32\.\.39: model 5 holds NaN"):
        build_index(bundles[0], tmp_path / "nan.npy", root, batch_size=16)
    assert sorted(p.name for p in root.iterdir()) == before and IndexStore(root).current() == version
    with pytest.raises(ValueError, match="index type 'annoy'"):
        build_index(bundles[0], tmp_path / "nan.npy", root, index_type="annoy")
    with pytest.raises(ValueError, match="recall target 1.5"):
        build_index(bundles[0], tmp_path / "nan.npy", root, recall_target=1.5)


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_indexes_record_tuned_parameters(bundles: tuple[Path, Path], bank: Path, tmp_path: Path,
                                                     index_type: str) -> None:
    version = build_index(bundles[0], bank, tmp_path, index_type=index_type, recall_target=0.9)
    s = Searcher.load(tmp_path)
    params = s.manifest.index
    key = "nprobe" if index_type == "ivf" else "efSearch"
    assert params["type"] == index_type and params[key] >= 1
    assert params["tuning"]["recall_at_10"] >= 0.9 and params["tuning"]["recall_target"] == 0.9
    nprobe_before = s.index.nprobe if index_type == "ivf" else s.index.hnsw.efSearch
    _, I = s.search(np.asarray(s.embeddings[[11, 200]]), 3)
    assert list(I[:, 0]) == [11, 200] and s.version == version
    after = s.index.nprobe if index_type == "ivf" else s.index.hnsw.efSearch
    assert after == nprobe_before  # parameters travel with each call; the shared index is untouched


def test_cli_build_index(bundles: tuple[Path, Path], bank: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["build-index", "--encoders", str(bundles[0]), "--bank", str(bank / "model"),
                              "--out", str(tmp_path / "idx"), "--type", "flat", "--keep", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert IndexStore(tmp_path / "idx").current() == doc["version"]
    assert Searcher.load(tmp_path / "idx").count == 300
    res = runner.invoke(app, ["build-index", "--encoders", str(bundles[0]), "--bank", str(tmp_path / "absent"),
                              "--out", str(tmp_path / "idx")])
    assert res.exit_code == 2 and "no such file or folder" in res.output
    res = runner.invoke(app, ["build-index", "--encoders", str(tmp_path), "--bank", str(bank),
                              "--out", str(tmp_path / "idx")])
    assert res.exit_code == 2 and "not an encoder bundle" in res.output


def test_real_openfwi_bank(openfwi_dir: Path, bundles: tuple[Path, Path], tmp_path: Path) -> None:
    """FlatVel-A's test models (many near-duplicates) build, verify and retrieve themselves."""
    zip_path = openfwi_dir / "flatvel_a" / "test_vmodel.zip"
    version = build_index(bundles[0], zip_path, tmp_path)
    s = Searcher.load(tmp_path)
    assert s.version == version and s.count >= 500 and s.ids[0].endswith(":0")
    assert s.sources[0][0].startswith("test_vmodel.zip:")
    _, I = s.search(np.asarray(s.embeddings[:50]), 1)
    same = np.array([np.array_equal(s.velocity_models(I[j:j + 1, 0])[0], s.velocity_models(np.array([j]))[0])
                     for j in range(50)])
    assert same.all()


def test_encoders_providers_and_input_checks(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    assert select_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    b = EncoderBundle(bundles[0], intra_op_threads=1)
    assert b.velocity is b.velocity and b.velocity.providers == ["CPUExecutionProvider"]
    e = b.physics.encode(np.random.default_rng(0).uniform(500, 4000, (3, 8)))
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert b.seismic.encode(np.zeros((2, 5, 1000, 70), np.float32)).shape == (2, 256)
    quiet = EncoderBundle(bundles[0], intra_op_threads=1, allow_spinning=False).velocity
    assert quiet.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    v = np.random.default_rng(1).uniform(1500, 4500, (2, 1, 70, 70)).astype(np.float32)
    np.testing.assert_allclose(quiet.encode(v), b.velocity.encode(v), atol=1e-5)
    with pytest.raises(ValueError, match=r"velocity input: shape \(2, 70, 70\), expected \(batch, 1, 70, 70\)"):
        b.velocity.encode(np.zeros((2, 70, 70), np.float32))
    with pytest.raises(TypeError, match="int64"):
        b.physics.encode(np.zeros((1, 8), np.int64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        b.physics.encode(np.full((1, 8), np.inf, np.float32))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in bundles[0].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "velocity.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match=r"velocity\.onnx: sha256"):
        EncoderBundle(broken)
    with pytest.raises(BundleError, match=r"velocity\.onnx: ONNX Runtime cannot load it"):
        OnnxEncoder(broken, "velocity")


def test_index_package_never_imports_torch() -> None:
    code = ("import sys, index, index.ann, index.build, index.gpu, index.searcher, index.store, "
            "index.synthetic; bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr


def test_searcher_routes_through_gpu_replicas_when_faiss_has_a_gpu(built: tuple[Path, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path (no GPU here): with a fake FAISS GPU module the searcher searches GPU replicas for k <= 2048."""
    import index.searcher as searcher_mod
    from index.gpu import GpuReplicas

    calls: list[int] = []

    class FakeGpuIndex:
        def __init__(self, cpu_index: object) -> None:
            self.cpu_index = cpu_index

        def search(self, xq: np.ndarray, k: int, params: object = None) -> tuple[np.ndarray, np.ndarray]:
            calls.append(k)
            return self.cpu_index.search(xq, k, params=params)  # type: ignore[attr-defined]

    fake = type("FakeFaiss", (), {"StandardGpuResources": object, "get_num_gpus": staticmethod(lambda: 1),
                                  "index_cpu_to_gpu": staticmethod(lambda res, dev, idx: FakeGpuIndex(idx))})
    monkeypatch.setattr(searcher_mod, "want_gpu", lambda index_type, use_gpu: use_gpu is not False)
    monkeypatch.setattr(searcher_mod, "GpuReplicas", lambda index: GpuReplicas(index, faiss_module=fake))
    s = Searcher.load(built[0])
    assert s.device == "gpu"
    _, I = s.search(np.asarray(s.embeddings[[7]]), 4)
    assert calls == [4] and I[0, 0] == 7
    assert Searcher.load(built[0], use_gpu=False).device == "cpu"


def test_concurrent_searches_match_sequential_and_never_return_missing(bundles: tuple[Path, Path], bank: Path,
                                                                      tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    build_index(bundles[0], bank, tmp_path, index_type="ivf", verify_sample=50)
    s = Searcher.load(tmp_path)
    queries = [np.asarray(s.embeddings[i:i + 3]) for i in range(0, 60, 3)]
    expected = [s.search(q, 10) for q in queries]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: s.search(q, 10), queries * 3))
    for (D, I), (D_ref, I_ref) in zip(got, expected * 3):
        np.testing.assert_array_equal(I, I_ref)
    # k = the whole bank: more than the probed IVF lists hold, still k valid entries, exactly ranked.
    D, I = s.search(queries[0], s.count)
    assert (I >= 0).all() and sorted(I[0]) == list(range(s.count))
    np.testing.assert_allclose(D[0], np.sort(np.asarray(s.embeddings) @ queries[0][0])[::-1], atol=1e-5)
