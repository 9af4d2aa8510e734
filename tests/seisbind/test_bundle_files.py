"""A copy of a bundle keeps every file its manifest names: graphs, variants, refiner and calibration."""

from __future__ import annotations

from pathlib import Path

from seisbind.bundle_copy import bundle_files, copy_bundle_files

DOC = {
    "sha256": {"seismic.onnx": "a", "velocity.onnx": "b", "physics.onnx": "c", "refiner.onnx": "d"},
    "variants": {"seismic": {"fast": {"file": "seismic.fast.onnx"}, "int8": {"file": "seismic.int8.onnx"}}},
    "calibration": {"file": "calibration.json", "sha256": "e"},
}


def test_bundle_files_lists_graphs_variants_and_calibration() -> None:
    assert bundle_files(DOC) == ["seismic.onnx", "velocity.onnx", "physics.onnx", "refiner.onnx",
                                 "seismic.fast.onnx", "seismic.int8.onnx", "calibration.json"]
    assert bundle_files({"sha256": {"seismic.onnx": "a"}}) == ["seismic.onnx"]


def test_copy_keeps_every_named_file_except_skipped(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for name in bundle_files(DOC):
        (src / name).write_text(name)
    copy_bundle_files(src, dst, DOC, skip=("calibration.json",))
    assert sorted(p.name for p in dst.iterdir()) == sorted(set(bundle_files(DOC)) - {"calibration.json"})
    assert (dst / "seismic.int8.onnx").read_text() == "seismic.int8.onnx"
