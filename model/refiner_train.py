"""Training of the learned refiner (``seisbind train-refiner``, docs/learned_refiner.md): L1 loss in m/s on the
training pairs with neighbours retrieved from a bank without the pair's own model (model.refiner_data), the gathers
mirrored and perturbed like field data on the fly (model.augment, as the encoders are trained), validation
on the held-out pairs (MAE of the retrieved top-1, of the similarity-weighted top-k mean and of the refiner), a time
budget over which the learning rate is annealed, an atomic checkpoint after every epoch (rerun the same command to
resume), and the best validation state exported into a new encoder bundle (model.refiner_export)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seisbind.bundle import EncoderBundle
from seisbind.files import write_json_atomic

from model import augment
from model.batches import augment_seed, epoch_generator
from model.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint, write_metrics
from model.config import AugmentConfig, RunError
from model.data import mirror
from model.optim import lr_factor
from model.refiner import RefinerNet, create_refiner
from model.refiner_config import RefinerTrainConfig
from model.refiner_data import NeighbourSplit, RefinerData, baseline_errors, load_refiner_data

log = logging.getLogger("seisbind.refiner")

WARMUP = 0.03
"""Share of the schedule spent warming the learning rate up."""
RESUME_FREE = ("out", "epochs", "time_budget_min", "threads")
"""Settings that may change between the sessions of one run."""


@dataclass
class RefinerState:
    """Progress of a refiner run, stored in its checkpoint."""

    epoch: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_mae: float = math.inf
    best_epoch: int = -1
    finished: bool = False


def neighbour_batch(net: RefinerNet, split: NeighbourSplit, bank: torch.Tensor, rows: torch.Tensor,
                    flips: torch.Tensor | None = None, augment_cfg: AugmentConfig | None = None,
                    generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised gathers, neighbour models [b, k, 70, 70] m/s, scores, truth [b, 70, 70]) of ``rows``, with the
    flagged pairs mirrored left-right (gathers, neighbours and truth together) and, given ``augment_cfg``, the
    gathers perturbed like field data before the front end's normalisation (draws from ``generator``)."""
    dec, models = split.pre[rows], bank[split.rows[rows]]
    scores, truth = split.scores[rows], split.truth[rows]
    if flips is not None and bool(flips.any()):
        mp, mm = mirror(dec[flips], models[flips])
        dec[flips], models[flips], truth[flips] = mp, mm, truth[flips].flip(-1)
    if augment_cfg is not None:
        dec = augment.apply(dec, generator or torch.Generator(), augment_cfg, net.front.decimated_dt,
                            net.front.white_noise_gain)
    return net.front.normalise(dec), models, scores, truth


@torch.no_grad()
def predict(net: RefinerNet, split: NeighbourSplit, bank: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The refiner's models [n, 70, 70] m/s for every pair of a split (eval mode)."""
    was = net.training
    net.eval()
    out = []
    for s in range(0, len(split), batch):
        pre, models, scores, _ = neighbour_batch(net, split, bank, torch.arange(s, min(s + batch, len(split))))
        out.append(net.forward_features(pre, models, scores))
    net.train(was)
    return torch.cat(out) if out else torch.zeros((0, 70, 70))


def validate(net: RefinerNet, data: RefinerData) -> float:
    """Mean absolute error (m/s) of the refiner over the held-out pairs."""
    return float((predict(net, data.val, data.bank) - data.val.truth).abs().mean())


def held_out_errors(net: RefinerNet, data: RefinerData) -> dict[str, Any]:
    """Per held-out pair (its row in the whole data set): MAE (m/s) of the top-1, the top-k mean and the refiner."""
    errors = baseline_errors(data.val, data.bank)
    refined = (predict(net, data.val, data.bank) - data.val.truth).abs().mean(dim=(1, 2)).numpy()
    return {"pairs": data.val.pairs.tolist(), "top1_mae_mps": errors["top1"].tolist(),
            "topk_mean_mae_mps": errors["topk_mean"].tolist(), "refiner_mae_mps": refined.tolist()}


def _resume(cfg: RefinerTrainConfig) -> dict[str, Any] | None:
    out = Path(cfg.out)
    if not (out / CHECKPOINT).is_file():
        if out.exists() and any(out.iterdir()):
            raise RunError(f"{out}: exists and is not a refiner run (no {CHECKPOINT}); choose another --out")
        return None
    ckpt = load_checkpoint(out)
    if ckpt.get("kind") != "refiner":
        raise RunError(f"{out}: holds a training run that is not a refiner's; choose another --out")
    old, new = RefinerTrainConfig.from_dict(ckpt["config"]).to_dict(), cfg.to_dict()
    diff = [k for k in new if k not in RESUME_FREE and old.get(k) != new[k]]
    if diff:
        raise RunError(f"{out}: holds a refiner run with different settings ({', '.join(diff)}); use another --out "
                       "or the original settings to resume")
    return ckpt


def _epoch(net: RefinerNet, opt: torch.optim.Optimizer, data: RefinerData, cfg: RefinerTrainConfig,
           state: RefinerState, started: float) -> tuple[bool, float]:
    """One epoch of optimiser steps: (False when the time budget ran out during it, mean training loss in m/s)."""
    n = len(data.train)
    steps_per_epoch = max(1, n // cfg.batch_size)
    g = epoch_generator(cfg.seed, state.epoch)
    perm, flips = torch.randperm(n, generator=g), torch.rand(n, generator=g) < cfg.mirror_p
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    net.train()
    losses: list[float] = []
    for i in range(steps_per_epoch):
        elapsed = state.elapsed_s + time.monotonic() - started
        if budget_s is not None and elapsed >= budget_s:
            return False, float(np.mean(losses)) if losses else math.nan
        frac = state.step / (cfg.epochs * steps_per_epoch)
        if budget_s is not None:
            frac = max(frac, elapsed / budget_s)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(frac, WARMUP)
        rows = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        pre, models, scores, truth = neighbour_batch(net, data.train, data.bank, rows, flips[rows], cfg.augment,
                                                     augment_seed(cfg.seed, state.step, 0))
        loss = (net.forward_features(pre, models, scores) - truth).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1000.0)
        opt.step()
        state.step += 1
        losses.append(float(loss.detach()))
    return True, float(np.mean(losses))


def _save(cfg: RefinerTrainConfig, net: RefinerNet, opt: torch.optim.Optimizer, state: RefinerState,
          best: dict[str, torch.Tensor]) -> None:
    doc = {"kind": "refiner", "config": cfg.to_dict(), "model": net.state_dict(), "optimizer": opt.state_dict(),
           "best": best, "state": vars(state)}
    save_checkpoint(Path(cfg.out) / CHECKPOINT, doc)
    write_metrics(Path(cfg.out), state.history)


def train_loop(cfg: RefinerTrainConfig, net: RefinerNet, data: RefinerData, ckpt: dict[str, Any] | None
               ) -> tuple[RefinerState, dict[str, torch.Tensor]]:
    """Epochs until the epoch limit or the time budget; validation and an atomic checkpoint after each; returns the
    final state and the best validation state dict."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state, best = RefinerState(), {k: v.clone() for k, v in net.state_dict().items()}
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state, best = RefinerState(**ckpt["state"]), ckpt["best"]
        log.info("resuming %s at epoch %d", cfg.out, state.epoch)
    while not state.finished and state.epoch < cfg.epochs:
        started = time.monotonic()
        complete, train_loss = _epoch(net, opt, data, cfg, state, started)
        state.elapsed_s += time.monotonic() - started
        val = validate(net, data)
        state.epoch += complete
        state.history.append({"epoch": state.epoch, "step": state.step, "elapsed_min": state.elapsed_s / 60,
                              "train_l1_mps": train_loss, "val_refiner_mae_mps": val})
        log.info("refiner epoch %d: validation MAE %.1f m/s", state.epoch, val)
        if val < state.best_val_mae:
            state.best_val_mae, state.best_epoch = val, state.epoch
            best = {k: v.detach().clone() for k, v in net.state_dict().items()}
        state.finished = not complete or state.epoch >= cfg.epochs
        _save(cfg, net, opt, state, best)
    return state, best


def train_refiner(cfg: RefinerTrainConfig, bundle_out: str | None = None) -> dict[str, Any]:
    """``seisbind train-refiner``: train (or resume) the refiner, then, with ``bundle_out``, export its best
    validation state into a copy of the encoder bundle. Returns a summary: validation MAE (m/s) of the retrieved
    top-1, of the top-k mean and of the refiner, epochs, minutes, and the new bundle's manifest facts."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = _resume(cfg)
    bundle = EncoderBundle(cfg.encoders, intra_op_threads=cfg.threads)
    torch.manual_seed(cfg.seed)
    net = create_refiner(cfg.model, seed=cfg.seed)
    data = load_refiner_data(cfg.data, bundle, net, cfg.model.k, cfg.val_fraction, cfg.seed)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(cfg.out) / "config.json", cfg.to_dict())
    state, best = train_loop(cfg, net, data, ckpt)
    net.load_state_dict(best)
    per_pair = held_out_errors(net, data)
    write_json_atomic(Path(cfg.out) / "val_errors.json", per_pair)
    metrics = {**{k: float(np.mean(per_pair[k])) for k in ("top1_mae_mps", "topk_mean_mae_mps", "refiner_mae_mps")},
               "val_pairs": len(data.val), "train_pairs": len(data.train), "k": cfg.model.k,
               "epochs": state.epoch, "best_epoch": state.best_epoch, "train_minutes": state.elapsed_s / 60}
    summary: dict[str, Any] = {"run": cfg.out, **metrics}
    if bundle_out is not None:
        from model.refiner_export import export_refiner

        manifest = export_refiner(net, cfg, data, bundle_out, metrics)
        summary |= {"bundle": bundle_out, "bundle_id": manifest.bundle_id, "refiner": manifest.refiner}
    write_json_atomic(Path(cfg.out) / "summary.json", summary)
    return summary

