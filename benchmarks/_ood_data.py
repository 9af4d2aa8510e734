"""Data of benchmarks/ood.py: the simulated held-out sets (in distribution: the first real ``openfwi-vel`` test
models of each family; other geology: synthetic families), the bank's index and the encoder bundle (with
``--smoke``, a tiny model trained on the spot). Everything is cached under ``--work`` and resumes."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seisbind.bundle import EncoderBundle
from seisbind.openfwi import read_models

from benchmarks._common import simulate_first_models
from index.build import build_index
from index.calibrate import NoisyCopies, QuerySet, collect_folder
from index.searcher import Searcher
from index.store import IndexStore

ID_FAMILIES = ("flatvel_a", "curvevel_a")


@dataclass
class Setup:
    """What the benchmark measures: the bundle, the searched index, the held-out folders, and the gallery of every
    in-distribution test model (the simulated ones first, in folder order)."""

    bundle: EncoderBundle
    searcher: Searcher
    id_folders: dict[str, Path]
    family_folders: dict[str, Path]
    gallery_models: np.ndarray
    calibration_folders: dict[str, Path]
    """The in-distribution calibration sets: ``--id-data`` where given, else ``id_folders``."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def simulate_family(out: Path, family: str, count: int, seed: int) -> Path:
    from model.simulate import simulate_dataset

    log(f"simulating {count} {family} models into {out} (skips finished chunks)")
    simulate_dataset(out, family=family, count=count, seed=seed, chunk_size=50, show_progress=False)
    return out


def gallery(args: argparse.Namespace) -> np.ndarray:
    """Every in-distribution test model, the first ``id_count`` of each family first (the simulated queries)."""
    parts = [read_models(args.openfwi_dir / f / "test_vmodel.zip").array() for f in ID_FAMILIES]
    head = [p[:args.id_count] for p in parts]
    tail = [p[args.id_count:] for p in parts]
    return np.concatenate(head + (tail if not args.smoke else []))


def bank_folder(work: Path, banks: list[Path]) -> Path:
    """One bank folder of symbolic links to every model file of the given banks (``seisbind build-index`` takes one
    bank)."""
    out = work / "bank" / "model"
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for b in banks:
        for label, _ in read_models(b).parts:
            n += 1
            link, target = out / f"model{n}.npy", Path(label).resolve()
            if link.is_symlink() and Path(os.readlink(link)) != target:
                link.unlink()  # left by an earlier run on other banks (or a moved checkout)
            if not link.is_symlink():
                link.symlink_to(target)
    for extra in out.glob("model*.npy"):  # links beyond this bank's files, from an earlier, larger bank
        if int(extra.stem[len("model"):]) > n:
            extra.unlink()
    return out.parent


def index_for(bundle_dir: Path, bank: Path, root: Path) -> Searcher:
    """The current version of ``root``, built from ``bank`` with ``bundle_dir`` first if there is none."""
    bundle_id = EncoderBundle(bundle_dir).bundle_id
    if IndexStore(root).current() is None:
        log(f"building the index of {bank} into {root}")
        build_index(bundle_dir, bank, root, index_type="flat")
    return Searcher.load(root, expected_bundle_id=bundle_id)


def smoke_bundle(work: Path, folders: list[Path]) -> Path:
    """A tiny model trained for 20 epochs (about twenty seconds) on the smoke sets themselves, exported (the figures
    mean nothing; fewer epochs left it wrong on every in-distribution query on some CPUs)."""
    from model.config import ModelConfig, TrainConfig
    from model.export import export_run
    from model.train import train

    run = work / "smoke_run"
    train(TrainConfig(data=tuple(str(f) for f in folders), out=str(run), epochs=20, batch_size=8, seed=0, lr=2e-3,
                      amp="off", val_fraction=0.0, threads=2, progress=False, model=ModelConfig.tiny(),
                      neighbour_group=1))
    export_run(run, work / "smoke_bundle")
    return work / "smoke_bundle"


def prepare(args: argparse.Namespace, families: list[str]) -> Setup:
    """Simulate what is missing, build the index if needed, and load the bundle and the index."""
    work = args.work
    id_folders = {}
    for fam in ID_FAMILIES:
        out = work / "in_distribution" / f"{fam}_test_first{args.id_count}"
        log(f"simulating the first {args.id_count} {fam} test models into {out} (skips finished chunks)")
        id_folders[fam] = simulate_first_models(out, args.openfwi_dir / fam / "test_vmodel.zip", args.id_count)
    fam_folders = {f: simulate_family(work / "families" / f"{f}_n{args.family_count}_s{args.seed}", f,
                                      args.family_count, args.seed) for f in families}
    if args.smoke:
        args.bundle = smoke_bundle(work, [*id_folders.values(), *fam_folders.values()])
        args.bank = [*id_folders.values(), *fam_folders.values()]
    bank = bank_folder(work, args.bank)
    searcher = index_for(args.bundle, bank, work / f"index_{EncoderBundle(args.bundle).bundle_id}")
    calib = {id_name(f): f for f in args.id_data} or id_folders
    return Setup(EncoderBundle(args.bundle), searcher, id_folders, fam_folders, gallery(args), calib)


def id_name(folder: Path) -> str:
    """The family an in-distribution folder holds (the first of ``ID_FAMILIES`` in its path), else its name."""
    return next((f for f in ID_FAMILIES if f in Path(folder).parts), Path(folder).name)


def query_sets(setup: Setup) -> dict[str, list[QuerySet]]:
    """The query sets by kind: ``id`` (in distribution), ``fam`` (other geology) and a noisy copy of each
    (``id_noisy``, ``fam_noisy``: ``index.calibrate.NoisyCopies``, as ``seisbind calibrate`` fits on): features and
    top-1 MAE of every gather."""
    enc, s = setup.bundle.seismic, setup.searcher
    copies = NoisyCopies()
    out = {"id": [collect_folder(enc, s, f, True, name) for name, f in setup.calibration_folders.items()],
           "id_noisy": [collect_folder(enc, s, f, copies.in_distribution, f"{name} + noise", copies)
                        for name, f in setup.calibration_folders.items()]}
    log("in-distribution sets and their noisy copies searched")
    out["fam"] = [collect_folder(enc, s, f, False, name) for name, f in setup.family_folders.items()]
    out["fam_noisy"] = [collect_folder(enc, s, f, False, f"{name} + noise", copies)
                        for name, f in setup.family_folders.items()]
    log("family sets and their noisy copies searched")
    return out
