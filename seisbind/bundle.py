"""Encoder bundle format (DESIGN section 4), numpy-free and torch-free: read, verify and write manifests.

A bundle is a folder with ``seismic.onnx``, ``velocity.onnx``, ``physics.onnx`` and ``manifest.json``. Each ONNX
file takes physical units (gathers [B, 5, 1000, 70]; velocity [B, 1, 70, 70] m/s; descriptors [B, 8] in the
units of DESCRIPTOR_UNITS) on input ``INPUT_NAMES[modality]`` and returns an L2-normalised float32 embedding
[B, 256] on output ``OUTPUT_NAME``. ``bundle_id`` is the sha256 of the three ONNX files' hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MODALITIES = ("seismic", "velocity", "physics")
ONNX_FILES = {m: f"{m}.onnx" for m in MODALITIES}
INPUT_NAMES = {"seismic": "gathers", "velocity": "velocity", "physics": "descriptors"}
OUTPUT_NAME = "embedding"


class BundleError(ValueError):
    """An encoder bundle that is missing, incomplete or corrupt."""


def sha256_file(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def compute_bundle_id(hashes: dict[str, str]) -> str:
    """The bundle id: sha256 over the three ONNX files' sha256, in modality order (first 16 hex digits)."""
    joined = "".join(hashes[ONNX_FILES[m]] for m in MODALITIES)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def write_json_atomic(path: str | os.PathLike[str], doc: Any) -> None:
    """Write JSON through a temporary file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(folder: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """Load a bundle's manifest; with ``verify``, check every ONNX file exists and matches its sha256 and that
    bundle_id is consistent. Raises BundleError naming the file and what is wrong."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{folder}: not an encoder bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as e:
        raise BundleError(f"{mpath}: not valid JSON: {e}") from e
    for key in ("embedding_dim", "sha256", "bundle_id", "descriptor_names", "descriptor_stats"):
        if key not in manifest:
            raise BundleError(f"{mpath}: missing key {key!r}")
    if verify:
        for m in MODALITIES:
            f = folder / ONNX_FILES[m]
            if not f.is_file():
                raise BundleError(f"{f}: missing")
            want = manifest["sha256"].get(ONNX_FILES[m])
            got = sha256_file(f)
            if got != want:
                raise BundleError(f"{f}: sha256 {got[:12]}… does not match the manifest's {str(want)[:12]}… (corrupt or replaced)")
        if compute_bundle_id(manifest["sha256"]) != manifest["bundle_id"]:
            raise BundleError(f"{mpath}: bundle_id does not match the files' hashes")
    return manifest


def finish_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the ONNX files' sha256 and the bundle_id to ``manifest`` and write it atomically into ``folder``."""
    folder = Path(folder)
    hashes = {ONNX_FILES[m]: sha256_file(folder / ONNX_FILES[m]) for m in MODALITIES}
    manifest = {**manifest, "sha256": hashes, "bundle_id": compute_bundle_id(hashes)}
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest
