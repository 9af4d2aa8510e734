"""Service building blocks without a server: payload parsing, descriptor aggregation, bank paths, settings,
micro-batching."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from seisbind import cores
from seisbind.neighbours import infer_descriptors, neighbour_weights
from seisbind.npy import npy_bytes as npy

from service.api.payload import decode
from service.banks import BankOutsideRootError, resolve_bank
from service.batching import MicroBatcher
from service.core import cpus
from service.core.config import Settings
from service.inputs import InputError, check_descriptors, check_gathers, check_k, parse_npy
from service.schemas import InferRequest, RetrieveRequest

G = (5, 1000, 70)


def _raw_header(header: dict) -> bytes:
    """A version 1.0 .npy header saying ``header``, with no data after it."""
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


# -- .npy parsing ----------------------------------------------------------------------------------------------

def test_parse_npy_round_trip_single_and_batch() -> None:
    one = np.random.default_rng(0).standard_normal(G).astype(np.float32)
    np.testing.assert_array_equal(parse_npy(npy(one)), one)
    batch = np.stack([one, one * 2])
    np.testing.assert_array_equal(parse_npy(npy(batch)), batch)


def test_parse_npy_accepts_big_endian_and_fortran_order() -> None:
    one = np.random.default_rng(1).standard_normal(G).astype(">f4")
    out = check_gathers(parse_npy(npy(one)), 4)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out[0], one.astype(np.float32))
    fort = np.asfortranarray(one.astype(np.float32))
    np.testing.assert_array_equal(check_gathers(parse_npy(npy(fort)), 4)[0], one.astype(np.float32))


@pytest.mark.parametrize("body, match", [
    (b"PK\x03\x04 a zip", "does not start with"),
    (b"\x93NUMPY\x09\x00", "version 9.0"),
    (b"\x93NUMPY\x01\x00\xff\xff{", "not a readable .npy"),
])
def test_parse_npy_refuses_garbage(body: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_npy(body)


def test_parse_npy_checks_header_before_reading_data() -> None:
    # A header claiming 100,000 gathers (140 GB) with no data: refused on length, nothing allocated.
    with pytest.raises(InputError, match="truncated or padded"):
        parse_npy(_raw_header({"descr": "<f4", "fortran_order": False, "shape": (100_000, 5, 1000, 70)}))
    with pytest.raises(InputError, match="dtype int64"):
        parse_npy(_raw_header({"descr": "<i8", "fortran_order": False, "shape": G}))
    with pytest.raises(InputError, match="dtype"):
        parse_npy(_raw_header({"descr": "|O", "fortran_order": False, "shape": G}))
    with pytest.raises(InputError, match="shape"):
        parse_npy(_raw_header({"descr": "<f4", "fortran_order": False, "shape": (5, 999, 70)}))


def test_parse_npy_refuses_truncated_data() -> None:
    body = npy(np.zeros(G, np.float32))
    with pytest.raises(InputError, match="truncated or padded"):
        parse_npy(body[:-4])
    with pytest.raises(InputError, match="truncated or padded"):
        parse_npy(body + b"\0\0\0\0")


# -- gather validation -----------------------------------------------------------------------------------------

def test_check_gathers_casts_float64_and_adds_batch_axis() -> None:
    out = check_gathers(np.ones(G, np.float64), 4)
    assert out.shape == (1, *G) and out.dtype == np.float32 and out.flags.c_contiguous


@pytest.mark.parametrize("arr, match", [
    (np.zeros(G, np.int32), "dtype int32"),
    (np.zeros(G, np.float16), "dtype float16"),
    (np.zeros(G, bool), "dtype bool"),
    (np.zeros((5, 1000, 69), np.float32), r"shape \(5, 1000, 69\)"),
    (np.zeros((2, 1, 5, 1000, 70), np.float32), "shape"),
    (np.zeros((0, *G), np.float32), "empty batch"),
    (np.zeros((5, *G), np.float32), "5 gathers in one request; at most 4"),
])
def test_check_gathers_refuses(arr: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        check_gathers(arr, 4)


def test_check_gathers_names_the_gather_with_nan_or_inf() -> None:
    arr = np.zeros((3, *G), np.float32)
    arr[2, 4, 999, 69] = np.nan
    with pytest.raises(InputError, match="gather 2 holds NaN or Inf"):
        check_gathers(arr, 4)
    big = np.zeros(G, np.float64)
    big[0, 0, 0] = 1e300  # finite in float64, Inf once cast
    with pytest.raises(InputError, match="beyond float32"):
        check_gathers(big, 4)


def test_check_k() -> None:
    assert check_k(5, 100, 300) == 5
    with pytest.raises(InputError, match="k=0 is out of range"):
        check_k(0, 100, 300)
    with pytest.raises(InputError, match=r"1 <= k <= 100"):
        check_k(101, 100, 300)
    with pytest.raises(InputError, match="holds 7 entries"):
        check_k(8, 100, 7)


def test_check_descriptors_requires_every_name_once() -> None:
    names = ["a", "b", "c"]
    np.testing.assert_array_equal(check_descriptors({"c": 3, "a": 1, "b": 2}, names), [[1, 2, 3]])
    with pytest.raises(InputError, match="missing c; unknown d"):
        check_descriptors({"a": 1, "b": 2, "d": 4}, names)
    with pytest.raises(InputError, match="b = inf: each must be a finite number"):
        check_descriptors({"a": 1, "b": float("inf"), "c": 3}, names)


# -- request decoding (both encodings) -------------------------------------------------------------------------

def test_decode_json_and_npy_agree() -> None:
    g = np.round(np.random.default_rng(2).standard_normal(G), 3)
    from_json = decode(json.dumps({"gathers": g.tolist(), "k": 3}).encode(), "json", RetrieveRequest,
                       {"k": None, "include_models": None}, 4)
    from_npy = decode(npy(g), "npy", RetrieveRequest, {"k": 3, "include_models": None}, 4)
    np.testing.assert_array_equal(from_json.gathers, from_npy.gathers)
    assert from_json.fields == from_npy.fields == {"k": 3, "include_models": False}


@pytest.mark.parametrize("body, match", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", 'object with "gathers"'),
    (b'{"gathers": [[1, 2], [3]]}', "ragged"),
    (b'{"gathers": [["a"]]}', "only numbers"),
    (b'{"gathers": [[null]]}', "only numbers"),
    (b'{"gathers": 3}', "nested lists"),
    (b'{"gathers": [], "k": "five"}', "k: Input should be a valid integer"),
    (b'{"gathers": [], "k": true}', "k: Input should be a valid integer"),
    (b'{"gathers": [], "colour": "red"}', "colour: Extra inputs are not permitted"),
    (b'{"gathers": [], "weighting": "median"}', "weighting"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
])
def test_decode_json_refuses(body: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        decode(body, "json", InferRequest, {}, 4)


# -- descriptor inference --------------------------------------------------------------------------------------

def test_aggregate_mean_and_similarity_weighting() -> None:
    values = np.array([[1000.0, 1.0], [2000.0, 3.0]])
    D, I = np.array([[0.9, 0.1]]), np.array([[0, 1]])
    (mean,), (std,) = infer_descriptors(values, D, I, "mean")
    np.testing.assert_allclose(mean, [1500.0, 2.0])
    np.testing.assert_allclose(std, [500.0, 1.0])
    (wmean,), (wstd,) = infer_descriptors(values, D, I, "similarity")
    np.testing.assert_allclose(wmean, [1100.0, 1.2])
    np.testing.assert_allclose(wstd, [np.sqrt(0.9 * 100**2 + 0.1 * 900**2), np.sqrt(0.9 * 0.2**2 + 0.1 * 1.8**2)])


def test_similarity_weights_fall_back_to_equal_when_all_scores_are_negative() -> None:
    np.testing.assert_allclose(neighbour_weights(np.array([-0.2, -0.5]), "similarity"), [0.5, 0.5])
    w = neighbour_weights(np.array([0.5, -0.5]), "similarity")
    assert w[0] > 0.99 and w.sum() == pytest.approx(1.0)


# -- bank paths ------------------------------------------------------------------------------------------------

def test_resolve_bank_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "banks"
    (root / "a" / "model").mkdir(parents=True)
    (root / "one.npy").write_bytes(b"")
    (root / "notes.txt").write_text("x")
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    assert resolve_bank(root, "a") == (root / "a").resolve()
    assert resolve_bank(root, str(root / "a")) == (root / "a").resolve()
    assert resolve_bank(root, "one.npy") == (root / "one.npy").resolve()
    for bad in ("../secret", str(outside), "escape", "a/../../secret", "/etc"):
        with pytest.raises(BankOutsideRootError, match="outside the bank root"):
            resolve_bank(root, bad)
    with pytest.raises(InputError, match="no such folder"):
        resolve_bank(root, "missing")
    with pytest.raises(InputError, match="not a folder, .npy or .zip"):
        resolve_bank(root, "notes.txt")
    with pytest.raises(InputError, match="NUL"):
        resolve_bank(root, "a\x00b")


# -- settings --------------------------------------------------------------------------------------------------

def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEISBIND_ENCODERS", str(tmp_path / "b"))
    monkeypatch.setenv("SEISBIND_INDEX_ROOT", str(tmp_path / "i"))
    monkeypatch.setenv("SEISBIND_MAX_K", "7")
    monkeypatch.setenv("SEISBIND_PROVIDERS", '["CPUExecutionProvider"]')
    s = Settings()
    assert s.encoders == tmp_path / "b" and s.max_k == 7 and s.providers == ["CPUExecutionProvider"]
    assert s.resolved_admin_token() is None and s.intra_op_threads() >= 1


def test_default_threads_give_each_core_its_own_micro_batch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import service.core.config as config

    monkeypatch.setattr(config, "usable_cores", lambda: 8)
    base = {"encoders": tmp_path, "index_root": tmp_path}
    s = Settings(**base)
    assert (s.workers(), s.intra_op_threads(), s.search_threads) == (8, 1, 1)
    assert Settings(**base, encode_workers=1).intra_op_threads() == 8
    assert Settings(**base, encode_workers=3).intra_op_threads() == 2
    assert Settings(**base, encode_workers=2, ort_intra_op_threads=3).intra_op_threads() == 3


def test_settings_admin_token_rules(tmp_path: Path) -> None:
    base = {"encoders": tmp_path, "index_root": tmp_path}
    token = "x" * 32
    assert Settings(**base, admin_token=token).resolved_admin_token() == token
    f = tmp_path / "token"
    f.write_text(token + "\n")
    assert Settings(**base, admin_token_file=f).resolved_admin_token() == token
    with pytest.raises(ValidationError, match="not both"):
        Settings(**base, admin_token=token, admin_token_file=f)
    with pytest.raises(ValidationError, match="placeholder or shorter"):
        Settings(**base, admin_token="changethis")
    with pytest.raises(ValidationError, match="no such file"):
        Settings(**base, admin_token_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValidationError, match="empty or unreadable"):
        Settings(**base, admin_token_file=tmp_path / "empty")
    with pytest.raises(ValidationError, match="encoders"):
        Settings(index_root=tmp_path)  # no default for paths


# -- micro-batching --------------------------------------------------------------------------------------------

def test_micro_batcher_batches_concurrent_requests_and_keeps_order() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def process(items: list[int]) -> list[int]:
        gate.wait(5)  # hold the first batch so the others queue up behind it
        calls.append(items)
        return [x * 10 for x in items]

    async def main() -> list[tuple[int, int]]:
        b: MicroBatcher[int, int] = MicroBatcher(process, max_size=8, max_wait_s=0.0, workers=1)
        await b.start()
        try:
            first = asyncio.create_task(b.submit(0))
            await asyncio.sleep(0.05)
            rest = [asyncio.create_task(b.submit(i)) for i in range(1, 6)]
            await asyncio.sleep(0.05)
            gate.set()
            out = await asyncio.gather(first, *rest)
        finally:
            await b.stop()
        return [(r, info.batch_items) for r, info in out]

    results = asyncio.run(main())
    assert [r for r, _ in results] == [0, 10, 20, 30, 40, 50]
    assert calls == [[0], [1, 2, 3, 4, 5]]
    assert [n for _, n in results] == [1, 5, 5, 5, 5, 5]


def test_micro_batcher_workers_run_the_initializer_and_engine_workers_search_on_one_thread() -> None:
    import faiss

    from index.ann import set_search_threads

    seen: list[tuple[str, int]] = []

    def process(items: list[int]) -> list[int]:
        seen.append((threading.current_thread().name, faiss.omp_get_max_threads()))
        return items

    async def main() -> None:
        b: MicroBatcher[int, int] = MicroBatcher(process, max_size=1, max_wait_s=0.0, workers=2,
                                                 initializer=lambda i: set_search_threads(1))
        await b.start()
        try:
            await asyncio.gather(*(b.submit(i) for i in range(4)))
        finally:
            await b.stop()

    asyncio.run(main())
    assert len(seen) == 4 and all(name.startswith("seisbind-batch") and n == 1 for name, n in seen)


def test_micro_batcher_reports_errors_to_every_request_and_keeps_running() -> None:
    def process(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return items

    async def main() -> tuple[str, int]:
        b: MicroBatcher[int, int] = MicroBatcher(process, max_size=4, max_wait_s=0.0)
        await b.start()
        try:
            with pytest.raises(ValueError, match="unlucky"):
                await b.submit(13)
            ok, _ = await b.submit(7)
        finally:
            await b.stop()
        return "ok", ok

    assert asyncio.run(main()) == ("ok", 7)


@pytest.mark.parametrize("incoming, expected", [(0, [1, 1]), (1, [2, 2])])
def test_micro_batcher_waits_for_more_only_while_requests_are_incoming(incoming: int, expected: list[int]) -> None:
    async def main() -> list[int]:
        b: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_size=8, max_wait_s=0.5, incoming=lambda: incoming)
        await b.start()
        try:
            first = asyncio.create_task(b.submit(1))
            await asyncio.sleep(0.05)
            second = asyncio.create_task(b.submit(2))
            return [info.batch_items for _, info in await asyncio.gather(first, second)]
        finally:
            await b.stop()

    # With nobody on the way, the first request goes alone; with a request announced, the batch waits for it.
    assert asyncio.run(main()) == expected


def test_lone_requests_go_to_worker_0_and_concurrent_ones_run_side_by_side() -> None:
    gate = threading.Barrier(2, timeout=5)  # passes only when two batches run at the same time

    def process(items: list[str]) -> list[str]:
        if items[0].startswith("pair"):
            gate.wait()
        return [threading.current_thread().name for _ in items]

    async def main() -> tuple[list[str], list[str]]:
        b: MicroBatcher[str, str] = MicroBatcher(process, max_size=1, max_wait_s=0.0, workers=3)
        await b.start()
        try:
            lone = [(await b.submit(f"lone{i}"))[0] for i in range(6)]
            pair = [r for r, _ in await asyncio.gather(b.submit("pair0"), b.submit("pair1"))]
        finally:
            await b.stop()
        return lone, pair

    lone, pair = asyncio.run(main())
    assert lone == ["seisbind-batch-0"] * 6  # the worker that shares the event loop's core
    assert len(set(pair)) == 2


def test_micro_batcher_stop_fails_queued_requests_and_refuses_new_ones() -> None:
    release = threading.Event()

    def process(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    async def main() -> tuple[object, object, str]:
        b: MicroBatcher[int, int] = MicroBatcher(process, max_size=1, max_wait_s=0.0, workers=1)
        await b.start()
        running = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(b.stop())
        await asyncio.sleep(0.05)
        release.set()
        await stopping
        with pytest.raises(RuntimeError, match="not running") as refused:
            await b.submit(3)
        done = await asyncio.gather(running, queued, return_exceptions=True)
        return done[0], done[1], str(refused.value)

    first, second, _ = asyncio.run(main())
    assert first[0] == 1  # type: ignore[index]  # the batch in progress finished
    assert isinstance(second, RuntimeError) and "shutting down" in str(second)


# -- CPUs ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("v2, v1, expected", [
    ("200000 100000\n", None, 2.0),
    ("150000 100000\n", None, 1.5),
    ("max 100000\n", None, None),
    (None, ("-1\n", "100000\n"), None),
    (None, ("400000\n", "100000\n"), 4.0),
    (None, None, None),
    ("garbage\n", None, None),
])
def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path: Path, v2: str | None, v1: tuple[str, str] | None,
                                          expected: float | None) -> None:
    cpu_max, v1_dir = tmp_path / "cpu.max", tmp_path / "cpu"
    if v2 is not None:
        cpu_max.write_text(v2)
    if v1 is not None:
        v1_dir.mkdir()
        (v1_dir / "cpu.cfs_quota_us").write_text(v1[0])
        (v1_dir / "cpu.cfs_period_us").write_text(v1[1])
    assert cores.cpu_quota(cpu_max, v1_dir) == expected


def test_available_cores_respects_the_cgroup_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "allowed_cpus", lambda: list(range(16)))
    monkeypatch.setattr(cores, "cpu_quota", lambda: 1.5)
    assert cores.usable_cores() == 2  # --cpus 1.5 on a 16-CPU host: two workers, not sixteen
    monkeypatch.setattr(cores, "cpu_quota", lambda: None)
    assert cores.usable_cores() == 16


def test_cpu_plan_puts_the_event_loop_with_worker_0() -> None:
    plan = cpus.CpuPlan.make(3, pin=True, cpus=[4, 5])
    assert plan.loop == {4} and plan.workers == ({4}, {5}, {4})
    assert plan.describe() == {"event_loop": 4, "workers": [4, 5, 4]}
    assert cpus.CpuPlan.make(2, pin=False, cpus=[4, 5]) == cpus.CpuPlan(None, (None, None))
    assert cpus.CpuPlan.make(2, pin=True, cpus=[4]) == cpus.CpuPlan(None, (None, None))  # one core: nothing to do


def test_pin_thread_moves_only_the_calling_thread() -> None:
    allowed = cpus.allowed_cpus()
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    seen: dict[str, set[int]] = {}

    def body() -> None:
        cpus.pin_thread({allowed[1]})
        seen["pinned"] = os.sched_getaffinity(0)
        inner = threading.Thread(target=lambda: seen.update(inherited=os.sched_getaffinity(0)))
        inner.start()
        inner.join()
        cpus.unpin_thread()
        seen["unpinned"] = os.sched_getaffinity(0)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"pinned": {allowed[1]}, "inherited": {allowed[1]}, "unpinned": set(allowed)}
    assert os.sched_getaffinity(0) == set(allowed)  # the test's own thread was never touched
