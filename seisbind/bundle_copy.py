"""Copies of an encoder bundle: the files its manifest names, and a copy with one more fitted file (calibration,
descriptor readout) written atomically. Torch-free."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from seisbind.bundle import MANIFEST, BundleError, EncoderBundle
from seisbind.files import PathLike, fsync_path, read_json, sha256_file, staged_folder, write_json_atomic

FITTED_SECTIONS = ("calibration", "descriptor_readout")
"""Manifest sections naming an optional file fitted after export ({"file": name, "sha256": hex, ...})."""


def bundle_files(doc: dict[str, Any]) -> list[str]:
    """Every file a manifest document names: the hashed graphs (encoders, refiner), the variants and the fitted
    files (calibration, descriptor readout)."""
    names = list(dict(doc.get("sha256") or {}))
    names += [str(v["file"]) for vs in dict(doc.get("variants") or {}).values() for v in dict(vs).values()]
    for section in FITTED_SECTIONS:
        entry = doc.get(section)
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            names.append(entry["file"])
    return list(dict.fromkeys(names))


def copy_bundle_files(src: PathLike, dst: PathLike, doc: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    """Copy (and fsync) every file the manifest document ``doc`` names from bundle ``src`` into folder ``dst``,
    except ``skip``: a copy of a bundle keeps its variants, refiner and calibration."""
    for name in bundle_files(doc):
        if name not in skip:
            shutil.copy2(Path(src) / name, Path(dst) / name)
            fsync_path(Path(dst) / name)


def write_fitted_file(bundle_dir: PathLike, out: PathLike, section: str, file_name: str, doc: dict[str, Any],
                      **entry: Any) -> Path:
    """Write a copy of the bundle with the fitted file ``file_name`` (JSON ``doc``) in ``out`` (the same folder
    allowed): every other file as it is, and the manifest's ``section`` naming the file, its sha256 and ``entry``.
    Written in a temporary sibling folder and renamed into place (an interruption leaves the old bundle whole),
    then verified as a bundle."""
    if section not in FITTED_SECTIONS:
        raise ValueError(f"{section!r}: not one of the fitted sections {FITTED_SECTIONS}")
    src, out = Path(bundle_dir).resolve(), Path(out).resolve()
    manifest = read_json(src / MANIFEST, BundleError, "an encoder bundle")
    with staged_folder(out, MANIFEST, "an encoder bundle") as tmp:
        copy_bundle_files(src, tmp, manifest, skip=(file_name,))
        write_json_atomic(tmp / file_name, doc)
        manifest[section] = {"file": file_name, "sha256": sha256_file(tmp / file_name), **entry}
        write_json_atomic(tmp / MANIFEST, manifest)
    EncoderBundle(out)  # verifies the result: hashes, bundle id, fitted files
    return out
