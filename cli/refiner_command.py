"""``seisbind train-refiner`` (docs/cli.md): train the learned refiner on training pairs with neighbours retrieved
by an encoder bundle, and export it into a new bundle. Registered on the app by cli.main."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from model.config import RunError
from model.refiner_config import RefinerConfig, RefinerTrainConfig, refiner_augment  # torch-free

_T = RefinerTrainConfig.default


def train_refiner(
    data: list[Path] = typer.Option(..., "--data", help="paired OpenFWI folder (repeat for several)"),
    encoders: Path = typer.Option(..., "--encoders", help="encoder bundle that retrieves the neighbours"),
    out: Path = typer.Option(..., "--out", help="run folder (checkpoint, metrics log); rerun to resume"),
    bundle_out: Optional[Path] = typer.Option(
        None, "--bundle-out", help="write the encoders plus refiner.onnx as a new bundle here"),
    k: int = typer.Option(RefinerConfig.k, "--k", help="neighbours per query"),
    epochs: int = typer.Option(_T("epochs"), "--epochs", help="maximum epochs"),
    batch_size: int = typer.Option(_T("batch_size"), "--batch-size"),
    lr: float = typer.Option(_T("lr"), "--lr"),
    val_fraction: float = typer.Option(_T("val_fraction"), "--val-fraction",
                                       help="pairs held out for validation (their models are in no bank)"),
    seed: int = typer.Option(_T("seed"), "--seed"),
    time_budget_min: Optional[float] = typer.Option(None, "--time-budget-min",
                                                    help="stop (annealed) after this many minutes"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch and ONNX Runtime intra-op threads"),
    width: int = typer.Option(RefinerConfig.width, "--width", help="base width of the refiner's U-Net"),
    migrated_channels: int = typer.Option(
        RefinerConfig.migrated_channels, "--migrated-channels",
        help="features per shot brought to depth through the neighbours' mean (0: no migration branch)"),
    augment: bool = typer.Option(True, "--augment/--no-augment",
                                 help="perturb the training gathers like field data (noise, muting, wavelet, ...)"),
) -> None:
    """Train the learned refiner (gathers + retrieved neighbours -> velocity model); resumes when --out holds a
    compatible run; with --bundle-out, exports it into a copy of the encoder bundle."""
    from seisbind.bundle import BundleError
    from seisbind.openfwi import OpenFWIError

    from cli.main import fail
    from model.export import ParityError
    from model.refiner_train import train_refiner as run_training

    try:
        net = RefinerConfig(k=k, width=width, migrated_channels=migrated_channels)
        cfg = RefinerTrainConfig(data=tuple(str(d.resolve()) for d in data), encoders=str(encoders.resolve()),
                                 out=str(out), model=net, epochs=epochs,
                                 batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed,
                                 time_budget_min=time_budget_min, threads=threads,
                                 augment=refiner_augment() if augment else None)
        summary = run_training(cfg, str(bundle_out) if bundle_out else None)
    except (OpenFWIError, BundleError, RunError, ParityError, FileExistsError, ValueError, OSError) as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        typer.secho(str(e) or "interrupted: rerun the same command to resume from the last epoch", err=True)
        raise typer.Exit(130)
    typer.echo(json.dumps(summary))
