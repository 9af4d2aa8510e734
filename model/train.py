"""Training of the tri-modal model (``seisbind train``): CPU or CUDA, bf16 autocast, checkpoints and resume
(``model.checkpoint``), time budget, progress and a metrics log, torchrun DistributedDataParallel with global-batch
negatives (``model.distributed``).

:func:`train` runs in named steps: check the run folder (:func:`resumable_checkpoint`), set up a :class:`Session`
(:func:`start_session`: model, data, optimiser), then run epochs of optimiser steps (:func:`run_epochs`,
:func:`run_epoch`, :func:`optimiser_step`), each epoch ending with validation and a checkpoint (:func:`end_epoch`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seisbind.files import write_json_atomic
from seisbind.progress import progress

from model.batches import Batch, augment_seed, autocast, epoch_generator, make_batch, recompute_batchnorm, validate
from model.checkpoint import CHECKPOINT, TrainState, load_checkpoint, save_checkpoint, write_metrics
from model.config import RunError, TrainConfig
from model.data import TensorPairs, folder_summary, load_pairs, open_folders, split_indices
from model.distributed import StopFlag, agree_any, barrier, init_distributed, shutdown
from model.encoders import SeisBindModel, create_model
from model.loss import TriModalLoss
from model.neighbour_batches import grouped_order, model_neighbours
from model.optim import MAX_LOGIT_SCALE, lr_factor, param_groups

log = logging.getLogger("seisbind.train")


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(cfg: TrainConfig) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last) for this config and machine."""
    if cfg.device == "cuda":
        amp = cfg.amp != "off"
    else:
        amp = cfg.amp == "on" or (cfg.amp == "auto" and cpu_has_bf16())
    cl = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cfg.device == "cpu")
    return amp, cl


def epoch_order(seed: int, epoch: int, n: int, mirror_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic permutation [n] and mirror flags [n] of one epoch (identical on every rank)."""
    g = epoch_generator(seed, epoch)
    return torch.randperm(n, generator=g), torch.rand(n, generator=g) < mirror_p


def train_loss(ddp: nn.Module, model: SeisBindModel, loss_fn: TriModalLoss, pre: torch.Tensor, vel: torch.Tensor,
               desc: torch.Tensor, device: torch.device, amp: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one (local) batch through ``ddp`` (the model, or its DDP wrapper) and score it with ``loss_fn``.
    With lambda2 = 0 the physics encoder runs outside the graph (no gradient), only to log its loss."""
    with autocast(device, amp):
        s_emb, v_emb, p_emb, scale = ddp(pre, vel, desc if loss_fn.lambda2 > 0 else None)
        if p_emb is None:
            with torch.no_grad():
                p_emb = model.physics(desc)
    return loss_fn(s_emb, v_emb, p_emb, scale, vel)


@dataclass
class Session:
    """One training session of a run: settings, model and its DDP wrapper, data, optimiser, and the state."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: SeisBindModel
    ddp: nn.Module
    opt: torch.optim.Optimizer
    loss_fn: TriModalLoss
    pairs: TensorPairs
    tr_rows: np.ndarray
    val_rows: np.ndarray
    data_summary: list[dict[str, Any]]
    amp: bool
    channels_last: bool
    state: TrainState
    started: float
    """time.monotonic() when this session started."""
    elapsed_before: float
    """Training seconds of the earlier sessions of the run."""
    session_steps: int = 0
    last_checkpoint: float = 0.0
    neighbours: np.ndarray | None = None
    """Each training row's nearest training rows (``model.neighbour_batches``), when batches are grouped."""

    def epoch_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's permutation of the training rows and mirror flags (grouped by neighbours if configured)."""
        if self.neighbours is not None:
            return grouped_order(self.cfg.seed, self.state.epoch, self.neighbours, self.cfg.neighbour_group,
                                 self.cfg.mirror_p)
        return epoch_order(self.cfg.seed, self.state.epoch, len(self.tr_rows), self.cfg.mirror_p)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.tr_rows) // self.cfg.batch_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def budget_s(self) -> float | None:
        return self.cfg.time_budget_min * 60 if self.cfg.time_budget_min else None

    @property
    def precision(self) -> dict[str, bool]:
        return {"bf16": self.amp, "channels_last": self.channels_last}

    def elapsed(self) -> float:
        """Training seconds of the run so far, this session included."""
        return self.elapsed_before + time.monotonic() - self.started

    def save(self) -> None:
        """Checkpoint and metrics log (rank 0), then wait for every rank."""
        if self.rank == 0:
            self.state.elapsed_s = self.elapsed()
            save_checkpoint(self.out / CHECKPOINT, {
                **self.state.to_dict(), "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "config": self.cfg.to_dict(), "data": self.data_summary, "precision": self.precision,
                "world_size": self.world, "train_rows": len(self.tr_rows), "val_rows": len(self.val_rows)})
            write_metrics(self.out, self.state.history)
        barrier(self.world)
        self.last_checkpoint = time.monotonic()


def summary(state: TrainState, out: Path, precision: dict[str, bool], world: int, stopped: str) -> dict[str, Any]:
    """What ``seisbind train`` prints: epochs, steps, minutes, last metrics, how it stopped."""
    return {"run": str(out), "epochs": state.epoch, "steps": state.global_step,
            "train_minutes": state.elapsed_s / 60, "finished": state.finished, "stopped": stopped,
            "last": state.history[-1] if state.history else {}, "precision": precision, "world_size": world}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run ``cfg.out``; return a summary (epochs, steps, minutes, last metrics, state).

    Raises OpenFWIError (bad data, naming the file) before any training work, RunError for an incompatible
    run folder, ValueError for bad settings."""
    started = time.monotonic()
    rank, world, device = init_distributed(cfg.device)
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} torchrun ranks")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = resumable_checkpoint(cfg)
    if ckpt is not None and ckpt.get("finished"):
        if rank == 0:
            log.info("%s: training already finished", cfg.out)
        return summary(TrainState.from_checkpoint(ckpt), Path(cfg.out), ckpt.get("precision", {}), world,
                       "already finished")
    s = start_session(cfg, rank, world, device, ckpt, started)
    stop_reason = run_epochs(s)
    shutdown(world)
    if rank != 0:
        s.state.elapsed_s = s.elapsed()
    result = summary(s.state, s.out, s.precision, world, stop_reason or "epochs")
    if stop_reason == "interrupted":
        raise KeyboardInterrupt(f"training interrupted; checkpoint saved in {s.out}, rerun the command to resume")
    return result


def resumable_checkpoint(cfg: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint of ``cfg.out`` if there is one and it may be resumed with ``cfg``; raises RunError if not."""
    out = Path(cfg.out)
    if not (out / CHECKPOINT).exists():
        return None
    ckpt = load_checkpoint(out)
    diff = cfg.resume_mismatch(ckpt["config"])
    if diff:
        raise RunError(f"{out}: holds a run with different settings ({', '.join(diff)}); "
                       "use another --out or the original settings to resume")
    if ckpt.get("finished"):
        old = TrainConfig.from_dict(ckpt["config"])
        if (old.epochs, old.time_budget_min) != (cfg.epochs, cfg.time_budget_min):
            raise RunError(f"{out}: training already finished with epochs={old.epochs}, time budget "
                           f"{old.time_budget_min} min; a finished schedule cannot be extended, use another --out")
    return ckpt


def initial_weights(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The latest weights of the run ``cfg.init_from`` (its descriptor statistics too). Raises RunError when that
    run has another architecture."""
    assert cfg.init_from is not None
    src = load_checkpoint(cfg.init_from)
    theirs = TrainConfig.from_dict(src["config"]).model
    if theirs != cfg.model:
        diff = sorted(k for k, v in cfg.model.to_dict().items() if theirs.to_dict().get(k) != v)
        raise RunError(f"{cfg.init_from}: its model differs from this run's in {', '.join(diff)}; pass its "
                       "architecture (--arch / --model-config) to start from it")
    return dict(src["model"])


def start_session(cfg: TrainConfig, rank: int, world: int, device: torch.device, ckpt: dict[str, Any] | None,
                  started: float) -> Session:
    """Model, data (validated in full before any work), optimiser and state, restored from ``ckpt`` if given."""
    init = initial_weights(cfg) if ckpt is None and cfg.init_from else None  # a bad --init-from fails before any work
    model = create_model(cfg.model, seed=cfg.seed)
    datasets = open_folders(cfg.data, model.seismic, cfg.preprocess_cache, linear=True)
    if rank == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(cfg.out) / "config.json", cfg.to_dict())
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    bar = progress(sum(len(d) for d in datasets), "preprocess", enabled=cfg.progress and rank == 0)
    pairs = load_pairs(datasets, model.seismic, progress_cb=bar.update, cache_dir=cfg.preprocess_cache,
                       linear=True)
    bar.close()
    data_summary = folder_summary(cfg.data, datasets)
    del datasets  # unmap the raw files (14 GB for the benchmark); only the preprocessed copy is needed
    tr_rows, val_rows = split_indices(len(pairs), cfg.val_fraction, cfg.seed)
    if len(tr_rows) < cfg.batch_size:
        raise ValueError(f"{len(tr_rows)} training pairs are fewer than one batch ({cfg.batch_size}); "
                         "lower --batch-size or add data")
    d_train = pairs.descriptors[torch.as_tensor(tr_rows)].double()
    model.physics.set_stats(d_train.mean(0).numpy(), d_train.std(0).clamp_min(1e-6).numpy())
    amp, channels_last = resolve_precision(cfg)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.scale_lr_mult), lr=cfg.lr, betas=(0.9, 0.98),
                            eps=1e-6)
    state = TrainState.from_checkpoint(ckpt)
    if init is not None:
        model.load_state_dict(init)
        if rank == 0:
            log.info("starting %s from the weights of %s", cfg.out, cfg.init_from)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if rank == 0:
            log.info("resuming %s at epoch %d step %d", cfg.out, state.epoch, state.step_in_epoch)
    model, ddp = wrap_distributed(model, cfg, world, device)
    neighbours = (model_neighbours(pairs.velocity[torch.as_tensor(tr_rows)]) if cfg.neighbour_group > 1 else None)
    return Session(cfg, rank, world, device, model, ddp, opt, TriModalLoss(cfg.lambda1, cfg.lambda2, cfg.soft_tau_mps),
                   pairs, tr_rows, val_rows, data_summary, amp, channels_last, state, started,
                   elapsed_before=state.elapsed_s, last_checkpoint=time.monotonic(), neighbours=neighbours)


def wrap_distributed(model: SeisBindModel, cfg: TrainConfig, world: int, device: torch.device
                     ) -> tuple[SeisBindModel, nn.Module]:
    """(model, module to call): under torchrun a DistributedDataParallel wrapper (with SyncBatchNorm on CUDA,
    batch statistics over the global batch; on CPU each rank normalises its own part), else the model itself."""
    if world == 1:
        return model, model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=cfg.lambda2 == 0)
    return model, ddp


def run_epochs(s: Session) -> str | None:
    """Epochs until the schedule ends or the session stops; returns why it stopped early ("interrupted",
    "max_steps", "time_budget") or None."""
    bar = progress(s.total_steps, "train", initial=s.state.global_step, enabled=s.cfg.progress and s.rank == 0)
    stop_reason = None
    s.model.train()
    with StopFlag() as flag:
        while not s.state.finished and s.state.epoch < s.cfg.epochs:
            stop_reason = run_epoch(s, flag, bar)
            if stop_reason in ("interrupted", "max_steps"):
                s.save()
                break
            end_epoch(s, stop_reason)
    bar.close()
    return stop_reason


def run_epoch(s: Session, flag: StopFlag, bar: Any) -> str | None:
    """The remaining optimiser steps of the current epoch, checkpointing every ``checkpoint_every_min``; returns
    why it stopped early, or None at the end of the epoch."""
    cfg, st = s.cfg, s.state
    perm, flips = s.epoch_order()
    local_b = cfg.batch_size // s.world
    while st.step_in_epoch < s.steps_per_epoch:
        glob = perm[st.step_in_epoch * cfg.batch_size:(st.step_in_epoch + 1) * cfg.batch_size]
        mine = glob[s.rank * local_b:(s.rank + 1) * local_b]
        loss = optimiser_step(s, torch.as_tensor(s.tr_rows)[mine], flips[mine])
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", T=f"{1 / float(s.model.scale().detach()):.4f}")
        stop, over, checkpoint_now, hit_max = agree_any(
            [flag.set, bool(s.budget_s and s.elapsed() >= s.budget_s),
             time.monotonic() - s.last_checkpoint > cfg.checkpoint_every_min * 60,
             cfg.max_steps is not None and s.session_steps >= cfg.max_steps], s.world, s.device)
        if stop or hit_max:
            return "interrupted" if stop else "max_steps"
        if over:
            return "time_budget"
        if checkpoint_now:
            s.save()
    return None


def optimiser_step(s: Session, rows: torch.Tensor, flips: torch.Tensor) -> float:
    """One AdamW step on the batch ``rows`` (``flips``: pairs to mirror) at the scheduled learning rate; returns
    the loss."""
    cfg, st = s.cfg, s.state
    pre, vel, desc = make_batch(s.pairs, rows, flips, s.device, s.channels_last, s.model.seismic, cfg.augment,
                                augment_seed(cfg.seed, st.global_step, s.rank))
    frac = st.global_step / s.total_steps
    if s.budget_s:
        frac = max(frac, s.elapsed() / s.budget_s)
    for g in s.opt.param_groups:
        g["lr"] = cfg.lr * lr_factor(frac, cfg.warmup_fraction) * g.get("lr_mult", 1.0)
    loss, _ = train_loss(s.ddp, s.model, s.loss_fn, pre, vel, desc, s.device, s.amp)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    s.opt.step()
    with torch.no_grad():
        for name, p in s.model.named_parameters():
            if "logit_scale" in name:
                p.clamp_(0, MAX_LOGIT_SCALE)
    value = float(loss.detach())
    st.loss_sum += value
    st.loss_count += 1
    st.step_in_epoch += 1
    st.global_step += 1
    s.session_steps += 1
    return value


def batchnorm_batches(s: Session) -> Iterator[Batch]:
    """The first ``bn_batches`` training batches of this epoch's order, perturbed as in training (their own draws)."""
    perm, flips = s.epoch_order()
    local_b = s.cfg.batch_size // s.world
    for i in range(min(s.cfg.bn_batches, s.steps_per_epoch)):
        mine = perm[i * s.cfg.batch_size + s.rank * local_b:i * s.cfg.batch_size + (s.rank + 1) * local_b]
        yield make_batch(s.pairs, torch.as_tensor(s.tr_rows)[mine], flips[mine], s.device, s.channels_last,
                         s.model.seismic, s.cfg.augment, augment_seed(s.cfg.seed, s.state.global_step + i, s.rank, 1))


def end_epoch(s: Session, stop_reason: str | None) -> None:
    """Log the epoch (or the part of it done before the time budget ran out) with its validation R@k, mark the
    run finished when the schedule is over, checkpoint."""
    st = s.state
    epoch_done = st.step_in_epoch >= s.steps_per_epoch
    scale = float(s.model.scale().detach())
    row = {"epoch": st.epoch + 1 if epoch_done else st.epoch + st.step_in_epoch / s.steps_per_epoch,
           "step": st.global_step, "loss": st.loss_sum / st.loss_count if st.loss_count else None,
           "logit_scale": scale, "temperature": 1 / scale, "logit_scale_vp": float(s.model.scale_vp().detach()),
           "lr": s.opt.param_groups[0]["lr"], "elapsed_min": s.elapsed() / 60}
    if s.cfg.bn_batches:
        row.update(validate(s.model, s.pairs, s.val_rows, s.device, s.amp, suffix="_running_bn"))
        recompute_batchnorm(s.model, batchnorm_batches(s), s.amp, s.device)
    row.update(validate(s.model, s.pairs, s.val_rows, s.device, s.amp))
    st.loss_sum, st.loss_count = 0.0, 0
    st.history.append(row)
    if s.rank == 0:
        log.info("epoch %s", json.dumps(row))
        print(f"epoch {row['epoch']:.2f}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "epoch"),
            file=sys.stderr, flush=True)
    if epoch_done:
        st.epoch += 1
        st.step_in_epoch = 0
    if stop_reason == "time_budget" or st.epoch >= s.cfg.epochs:
        st.finished = True
    s.save()
