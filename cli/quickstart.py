"""``seisbind quickstart``: from nothing to a serving instance on a small embedded default, in minutes on a CPU.

The steps, each cached in the work folder and skipped on a later run when it finished before with the same
settings and its outputs are still there (a stamp per step, ``stamps/<step>.json``, written last):

1. ``train-data``, ``test-data``, ``calib-data``: synthetic velocity models of the families and their shot
   gathers (the project's simulator), and two held-out splits simulated the same way from other seeds;
2. ``bank``: velocity models only (no gathers needed), the bank the service searches;
3. ``train``: a small model on the CPU under a time budget (an interrupted run resumes from its checkpoint);
4. ``export``, ``index``: the encoder bundle, and the bank embedded into a FAISS index version;
5. ``calibrate``: the bundle's confidence and out-of-distribution flag fitted on the calibration split searched
   against that index (``seisbind calibrate``); where the split is too small or uniform to fit, the step records
   why and the service answers with a null confidence;
6. ``evaluate``: retrieval on the held-out split (R@1/R@5) and descriptor inference from the bank;
7. ``example``: a query gather (.npy) for the copy-paste requests;

then it serves the index (``seisbind serve``) unless told not to. Every file is written atomically and every step
resumes, so Ctrl-C loses at most the step in progress. Torch is imported only by the steps that need it: a
second run goes straight to serving.

Work folder: ``data/{train,test,calib}/<family>`` (OpenFWI layout), ``bank/<family>.npy``, ``run/`` (training),
``bundle/``, ``indexes/``, ``report/`` (report.json of ``seisbind evaluate``), ``example/``, ``stamps/``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.bundle import BundleError, read_manifest
from seisbind.files import write_json_atomic

from cli.pipeline import Pipeline, PipelineError, Step, workdir_lock
from model.config import NARROW  # torch-free
from model.families import FAMILY_NAMES  # numpy only: a cached run never imports torch


@dataclass(frozen=True)
class QuickstartConfig:
    """What the quickstart generates and how long it trains."""

    families: tuple[str, ...]
    """Synthetic families (model.families) of the training set, test split and bank."""
    train_per_family: int
    """Simulated (gathers, model) training pairs per family."""
    test_per_family: int
    """Held-out simulated pairs per family (the R@k queries; their models are the gallery)."""
    calib_per_family: int
    """Held-out simulated pairs per family the confidence is fitted on (0: no calibration)."""
    bank_per_family: int
    """Velocity models per family in the served bank (no gathers: the bank is velocity models only)."""
    train_minutes: float
    """Training time budget (the learning-rate schedule anneals to it)."""
    epochs: int
    """Upper bound on training epochs."""
    batch_size: int
    model: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields (architecture); a dict so that a cached run never imports torch."""
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in FAMILY_NAMES]
        if not self.families or unknown:
            raise ValueError(f"families {list(self.families)}: expected one or more of {', '.join(FAMILY_NAMES)}")
        for name in ("train_per_family", "test_per_family", "bank_per_family", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be >= 1")
        if self.calib_per_family < 0:
            raise ValueError(f"calib_per_family = {self.calib_per_family}: must be >= 0")
        if self.train_per_family * len(self.families) < 2 * self.batch_size:
            raise ValueError(f"{self.train_per_family} training pairs per family are too few for batches of "
                             f"{self.batch_size}")
        if not self.train_minutes > 0:
            raise ValueError(f"train_minutes = {self.train_minutes}: must be > 0")


QUICK_MODEL = dict(NARROW)
"""The narrow architecture: trains in minutes on two CPU cores."""

PRESETS = {
    # About 12 minutes from nothing to serving on a 2-core laptop CPU; every geology family, so that a fresh
    # install answers on all of them, and a calibrated confidence.
    "default": QuickstartConfig(families=FAMILY_NAMES, train_per_family=200, test_per_family=30,
                                calib_per_family=40, bank_per_family=1000, train_minutes=6.0, epochs=100,
                                batch_size=32, model=QUICK_MODEL),
    # A few minutes (docker compose smoke runs).
    "small": QuickstartConfig(families=("flatvel-a", "curvevel-a"), train_per_family=64, test_per_family=16,
                              calib_per_family=0, bank_per_family=500, train_minutes=1.0, epochs=30, batch_size=16,
                              model=QUICK_MODEL),
    # Seconds of work, for tests: the whole pipeline on a handful of models.
    "tiny": QuickstartConfig(families=("flatvel-a",), train_per_family=16, test_per_family=8, calib_per_family=8,
                             bank_per_family=48,
                             train_minutes=0.5, epochs=1, batch_size=8,
                             model={"seis_trunk": (4, 8, 8), "seis_width": 16, "vel_width": 8, "phys_hidden": 32}),
}


def preset(name: str, train_minutes: float | None = None) -> QuickstartConfig:
    """A named configuration (``default``, ``small``, ``tiny``), optionally with another training budget."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: unknown; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    return cfg if train_minutes is None else replace(cfg, train_minutes=train_minutes)


@dataclass(frozen=True)
class Layout:
    """Paths inside the work folder."""

    root: Path

    def data(self, split: str, family: str) -> Path:
        return self.root / "data" / split / family

    @property
    def bank(self) -> Path:
        return self.root / "bank"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def indexes(self) -> Path:
        return self.root / "indexes"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def query(self) -> Path:
        return self.root / "example" / "query.npy"



# ---- steps ------------------------------------------------------------------------------------------------------

def _simulated(folder: Path, count: int) -> bool:
    from seisbind.openfwi import open_dataset

    return len(open_dataset(folder)) == count


def _simulate(layout: Layout, cfg: QuickstartConfig, split: str, count: int, seed: int,
              threads: int | None) -> dict[str, Any]:
    import torch

    from model.simulate import simulate_dataset

    if threads:
        torch.set_num_threads(threads)
    folders = []
    for i, family in enumerate(cfg.families):
        folder = layout.data(split, family)
        simulate_dataset(folder, family=family, count=count, seed=seed + i)
        folders.append(str(folder))
    return {"folders": folders, "pairs": count * len(cfg.families)}


def _make_bank(layout: Layout, cfg: QuickstartConfig) -> dict[str, Any]:
    from seisbind.files import save_npy_atomic

    from model.families import generate

    layout.bank.mkdir(parents=True, exist_ok=True)
    files = []
    for i, family in enumerate(cfg.families):
        models = generate(family, cfg.bank_per_family, np.random.default_rng([cfg.seed, 2, i]))
        path = layout.bank / f"{family}.npy"
        save_npy_atomic(path, models)
        files.append(str(path))
    return {"folder": str(layout.bank), "files": files, "models": cfg.bank_per_family * len(cfg.families)}


def _bank_valid(result: dict[str, Any], per_file: int) -> bool:
    from seisbind.openfwi import read_models

    return all(len(read_models(f)) == per_file for f in result["files"])


def _train(layout: Layout, cfg: QuickstartConfig, folders: list[str], threads: int | None) -> dict[str, Any]:
    from model.config import ModelConfig, TrainConfig
    from model.train import train

    tcfg = TrainConfig(data=tuple(str(Path(f).resolve()) for f in folders), out=str(layout.run),
                       epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, device="cpu",
                       time_budget_min=cfg.train_minutes, val_fraction=0.05, threads=threads,
                       neighbour_group=1, model=ModelConfig.from_dict(dict(cfg.model)))
    # random batches: grouped ones (hard negatives) learn the coarse structure more slowly at first, which a run of
    # minutes cannot make up; they were measured to pay off over the 40-minute openfwi-vel run
    summary = train(tcfg)
    return {"run": str(layout.run), "epochs": summary["epochs"], "steps": summary["steps"],
            "train_minutes": round(summary["train_minutes"], 2), "last": summary["last"]}


def _export(layout: Layout) -> dict[str, Any]:
    from model.export import export_run

    manifest = export_run(layout.run, layout.bundle)
    return {"bundle": str(layout.bundle), "bundle_id": manifest.bundle_id}


def _bundle_valid(layout: Layout, result: dict[str, Any]) -> bool:
    try:
        return read_manifest(layout.bundle, verify=True).bundle_id == result["bundle_id"]
    except BundleError:
        return False


def _build_index(layout: Layout) -> dict[str, Any]:
    from seisbind.progress import fraction_progress

    from index.build import build_index

    bar, report = fraction_progress("build-index")

    try:
        version = build_index(layout.bundle, layout.bank, layout.indexes, index_type="auto", keep=2,
                              progress_cb=report)
    finally:
        bar.close()
    return {"root": str(layout.indexes), "version": version}


def _index_valid(layout: Layout, result: dict[str, Any], bundle_id: str) -> bool:
    from index.searcher import read_version_manifest
    from index.store import IndexStore

    version = result["version"]
    if IndexStore(layout.indexes).current() != version:
        return False
    return read_version_manifest(layout.indexes / version).bundle_id == bundle_id


def _calibrate(layout: Layout, folders: list[str]) -> dict[str, Any]:
    from seisbind.calibration import CalibrationError

    from index.calibrate import calibrate

    if not folders:
        return {"calibrated": False, "reason": "no calibration split (calib_per_family = 0)"}
    try:
        cal, _ = calibrate(layout.bundle, layout.indexes, folders, [], layout.bundle)
    except CalibrationError as e:  # too few queries, or all of one outcome: serve without a confidence
        return {"calibrated": False, "reason": str(e)}
    held_out = sum(d["n"] for d in cal.fit["data"] if "noise_snr_db" not in d)
    return {"calibrated": True, "held_out": held_out,
            **{k: cal.fit[k] for k in ("n", "event_rate", "ece_on_fit", "index_version")}}


def _calibrated(layout: Layout, result: dict[str, Any]) -> bool:
    try:
        return ("calibration" in read_manifest(layout.bundle, verify=True).raw) == result["calibrated"]
    except BundleError:
        return False


def _evaluate(layout: Layout, test_folders: list[str], threads: int | None) -> dict[str, Any]:
    from model.evaluate import evaluate, onnx_embedder

    report = evaluate(onnx_embedder(layout.bundle, threads=threads), test_folders, [str(layout.bank)],
                      layout.report, k=5, figures=False)
    sv = report["p1"]["seismic_to_velocity"]
    return {"report": str(layout.report / "report.json"), "queries": report["queries"],
            "gallery_size": report["p1"]["gallery_size"], "R@1": sv["R@1"], "R@5": sv["R@5"], "R@10": sv["R@10"],
            "descriptor_mre": report["p2"]["descriptor_mre"], "bank_size": report["p2"]["bank_size"],
            "blend_descriptor_mre": report["p2"].get("blend", {}).get("descriptor_mre")}


def _write_example(layout: Layout, test_folder: str) -> dict[str, Any]:
    from seisbind.files import save_npy_atomic
    from seisbind.openfwi import open_dataset

    ds = open_dataset(test_folder)
    gather = np.asarray(ds.data[0][:1], dtype=np.float32)
    layout.query.parent.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(layout.query, gather)
    return {"query": str(layout.query), "shape": list(gather.shape), "source": [str(ds.files[0].data), 0]}


def build_steps(layout: Layout, cfg: QuickstartConfig, pipe: Pipeline, threads: int | None) -> list[Callable[[], Step]]:
    """The steps in order; each is created when its turn comes, so it can use the results of those before it."""
    fams = list(cfg.families)
    train_seed, test_seed, calib_seed = cfg.seed * 1000, cfg.seed * 1000 + 500, cfg.seed * 1000 + 700
    r = pipe.results
    return [
        lambda: Step("train-data", f"simulate {cfg.train_per_family * len(fams)} training pairs ({', '.join(fams)})",
                     {"families": fams, "count": cfg.train_per_family, "seed": train_seed},
                     lambda: _simulate(layout, cfg, "train", cfg.train_per_family, train_seed, threads),
                     lambda res: all(_simulated(Path(f), cfg.train_per_family) for f in res["folders"])),
        lambda: Step("test-data", f"simulate {cfg.test_per_family * len(fams)} held-out test pairs",
                     {"families": fams, "count": cfg.test_per_family, "seed": test_seed},
                     lambda: _simulate(layout, cfg, "test", cfg.test_per_family, test_seed, threads),
                     lambda res: all(_simulated(Path(f), cfg.test_per_family) for f in res["folders"])),
        lambda: Step("calib-data", f"simulate {cfg.calib_per_family * len(fams)} held-out calibration pairs",
                     {"families": fams, "count": cfg.calib_per_family, "seed": calib_seed},
                     lambda: (_simulate(layout, cfg, "calib", cfg.calib_per_family, calib_seed, threads)
                              if cfg.calib_per_family else {"folders": [], "pairs": 0}),
                     lambda res: all(_simulated(Path(f), cfg.calib_per_family) for f in res["folders"])),
        lambda: Step("bank", f"generate a bank of {cfg.bank_per_family * len(fams)} velocity models",
                     {"families": fams, "count": cfg.bank_per_family, "seed": cfg.seed},
                     lambda: _make_bank(layout, cfg),
                     lambda res: _bank_valid(res, cfg.bank_per_family)),
        lambda: Step("train", f"train a small model on the CPU (budget {cfg.train_minutes:g} min)",
                     {"data": r["train-data"], "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                      "train_minutes": cfg.train_minutes, "model": cfg.model, "seed": cfg.seed},
                     lambda: _train(layout, cfg, r["train-data"]["folders"], threads),
                     lambda res: (layout.run / "checkpoint.pt").is_file()),
        lambda: Step("export", "export the encoder bundle (ONNX)", {"train": r["train"]},
                     lambda: _export(layout), lambda res: _bundle_valid(layout, res)),
        lambda: Step("index", "build the index of the bank", {"bank": r["bank"], "bundle_id": r["export"]["bundle_id"]},
                     lambda: _build_index(layout),
                     lambda res: _index_valid(layout, res, r["export"]["bundle_id"])),
        lambda: Step("calibrate", "fit the confidence on the calibration split",
                     {"calib": r["calib-data"], "index": r["index"]},
                     lambda: _calibrate(layout, r["calib-data"]["folders"]),
                     lambda res: _calibrated(layout, res)),
        lambda: Step("evaluate", "evaluate retrieval on the held-out split",
                     {"test": r["test-data"], "bundle_id": r["export"]["bundle_id"], "bank": r["bank"]},
                     lambda: _evaluate(layout, r["test-data"]["folders"], threads),
                     lambda res: Path(res["report"]).is_file()),
        lambda: Step("example", "write an example query", {"test": r["test-data"]},
                     lambda: _write_example(layout, r["test-data"]["folders"][0]),
                     lambda res: layout.query.is_file()),
    ]


def check_same_config(layout: Layout, cfg: QuickstartConfig) -> None:
    """Record ``cfg`` in quickstart.json; refuse a work folder prepared with other settings (its data, run and
    index would not match them)."""
    path = layout.root / "quickstart.json"
    mine = json.loads(json.dumps(asdict(cfg)))
    try:
        old = json.loads(path.read_text()).get("config")
    except (OSError, ValueError):
        old = None
    if old is not None and old != mine:
        diff = sorted(k for k in mine if old.get(k) != mine[k])
        raise PipelineError(f"{layout.root} was prepared with other settings ({', '.join(diff)} differ); "
                              "use another --workdir, or delete this one to start over")
    if old is None:
        write_json_atomic(path, {"config": mine, "results": {}})


def prepare(workdir: str | os.PathLike[str], cfg: QuickstartConfig, threads: int | None = None,
            out: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or reuse) every step in ``workdir``; returns the results by step name and the steps that ran."""
    say = out or (lambda s: print(s, file=sys.stderr, flush=True))
    layout = Layout(Path(workdir).resolve())
    with workdir_lock(layout.root):
        check_same_config(layout, cfg)
        pipe = Pipeline(layout.root / "stamps", say)
        makers = build_steps(layout, cfg, pipe, threads)
        for i, make in enumerate(makers, 1):
            pipe.do(make(), i, len(makers))
    write_json_atomic(layout.root / "quickstart.json", {"config": asdict(cfg), "results": pipe.results})
    return {"layout": layout, "results": pipe.results, "ran": pipe.ran}


def serving_settings(layout: Layout, host: str | None = None, port: int | None = None) -> Any:
    """The service Settings for the quickstart's bundle and index (other settings: SEISBIND_* variables)."""
    from service.core.config import Settings

    overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    return Settings(encoders=layout.bundle, index_root=layout.indexes, bank_root=layout.root,
                    example_gather=layout.query, **overrides)
