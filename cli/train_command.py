"""``seisbind train`` (docs/cli.md): train the tri-modal model on paired OpenFWI folders (resumes a run).
Registered on the app by cli.main."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from model.config import AugmentConfig, Device, ModelConfig, RunError, Switch, TrainConfig  # torch-free


def _resolved(path: Optional[Path]) -> Optional[str]:
    return str(path.resolve()) if path else None


def _model_config(arch: str, model_config: Optional[Path]) -> ModelConfig:
    """The named architecture with the fields of a ``--model-config`` JSON file over it."""
    base = ModelConfig.named(arch).to_dict()
    return ModelConfig.from_dict({**base, **(json.loads(model_config.read_text()) if model_config else {})},
                                 stored=False)


def train(
    data: list[Path] = typer.Option(..., "--data", help="paired OpenFWI folder (repeat for several)"),
    out: Path = typer.Option(..., "--out", help="run folder (checkpoint, metrics log); rerun to resume"),
    epochs: int = typer.Option(TrainConfig.default("epochs"), "--epochs", help="maximum epochs"),
    batch_size: int = typer.Option(TrainConfig.default("batch_size"), "--batch-size", help="global batch (all ranks)"),
    seed: int = typer.Option(TrainConfig.default("seed"), "--seed"),
    device: Device = typer.Option(TrainConfig.default("device"), "--device"),
    time_budget_min: Optional[float] = typer.Option(None, "--time-budget-min",
                                                    help="stop (annealed) after this many minutes"),
    lr: float = typer.Option(TrainConfig.default("lr"), "--lr"),
    lambda1: float = typer.Option(TrainConfig.default("lambda1"), "--lambda1", help="InfoNCE(seismic,velocity) weight"),
    lambda2: float = typer.Option(TrainConfig.default("lambda2"), "--lambda2", help="InfoNCE(velocity,physics) weight"),
    soft_tau_mps: float = typer.Option(TrainConfig.default("soft_tau_mps"), "--soft-tau-mps",
                                       help="soft seismic-velocity positives softmax(-MAE/tau) over the batch's "
                                            "models, m/s (0: one-hot)"),
    scale_lr_mult: float = typer.Option(TrainConfig.default("scale_lr_mult"), "--scale-lr-mult",
                                        help="learning-rate multiplier of the logit scales"),
    val_fraction: float = typer.Option(TrainConfig.default("val_fraction"), "--val-fraction", help="held-out pairs"),
    augment: bool = typer.Option(True, "--augment/--no-augment",
                                 help="perturb every batch like field data: noise, dead traces, scaling, polarity, "
                                      "time shifts, source wavelet (model.config.AugmentConfig)"),
    clean_p: float = typer.Option(AugmentConfig.clean_p, "--clean-p",
                                  help="probability that a gather is left as simulated (with --augment)"),
    neighbour_group: int = typer.Option(TrainConfig.default("neighbour_group"), "--neighbour-group", help="batches "
                                        "of groups of this many similar models (hard negatives; 1: random)"),
    bn_batches: int = typer.Option(TrainConfig.default("bn_batches"), "--bn-batches",
                                   help="training batches BatchNorm statistics are recomputed from before each "
                                        "validation (0: running averages)"),
    amp: Switch = typer.Option(TrainConfig.default("amp"), "--amp", help="bf16 autocast"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads"),
    arch: str = typer.Option("default", "--arch", help="named architecture (model.config.ARCHITECTURES: default, "
                             "medium, narrow)"),
    model_config: Optional[Path] = typer.Option(None, "--model-config",
                                                help="JSON of ModelConfig fields (architecture; over --arch)"),
    preprocess_cache: Optional[Path] = typer.Option(
        None, "--preprocess-cache", help="folder caching the preprocessed gathers (reused by later runs)"),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="start from this run's weights (fine-tune)"),
) -> None:
    """Train the tri-modal model (resumes when --out holds a compatible run)."""
    from seisbind.openfwi import OpenFWIError

    from cli.main import fail
    from model.train import train as run_training

    try:
        cfg = TrainConfig(data=tuple(str(d.resolve()) for d in data), out=str(out), epochs=epochs,
                          batch_size=batch_size, seed=seed, device=device, time_budget_min=time_budget_min, lr=lr,
                          lambda1=lambda1, lambda2=lambda2, soft_tau_mps=soft_tau_mps, scale_lr_mult=scale_lr_mult,
                          val_fraction=val_fraction, amp=amp, threads=threads, bn_batches=bn_batches,
                          model=_model_config(arch, model_config), neighbour_group=neighbour_group,
                          augment=AugmentConfig(clean_p=clean_p) if augment else None, init_from=_resolved(init_from),
                          preprocess_cache=str(preprocess_cache) if preprocess_cache else None)
        summary = run_training(cfg)
    except (OpenFWIError, RunError, ValueError, OSError, RuntimeError) as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        typer.secho(str(e) or "interrupted", err=True)
        raise typer.Exit(130)
    typer.echo(json.dumps(summary))
