"""Training loop of the tri-modal model (``seisbind train``): CPU or CUDA, bf16 autocast, checkpoints and resume,
time budget, progress and a metrics log, torchrun DistributedDataParallel with global-batch negatives.

Run folder layout: ``config.json`` (the TrainConfig), ``checkpoint.pt`` (latest state, written atomically),
``metrics.jsonl`` (one line per epoch: loss, temperature, validation R@1, ...; rewritten from the checkpoint).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from seisbind.bundle import write_json_atomic
from seisbind.progress import progress

from model.config import TrainConfig
from model.data import TensorPairs, folder_summary, load_pairs, mirror, open_folders, split_indices
from model.encoders import SeisBindModel, create_model
from model.loss import TriModalLoss
from model.metrics import recall_at_k, true_ranks

log = logging.getLogger("seisbind.train")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
MAX_LOGIT_SCALE = math.log(100.0)


class RunError(ValueError):
    """A run folder that cannot be used (different settings, unreadable checkpoint)."""


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
    cl = cfg.channels_last == "on" or (cfg.channels_last == "auto" and amp and cfg.device == "cpu")
    return amp, cl


def save_atomic(path: Path, state: dict[str, Any]) -> None:
    """torch.save through a temporary file, fsync, rename."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(run: str | os.PathLike[str]) -> dict[str, Any]:
    """The latest checkpoint of a run folder (CPU tensors). Raises RunError naming the file."""
    path = Path(run) / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint (is {run} a training run folder?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise RunError(f"{path}: unreadable checkpoint: {e}") from e


def model_from_checkpoint(ckpt: dict[str, Any]) -> SeisBindModel:
    """Rebuild the trained model (eval mode, CPU) from a checkpoint."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = create_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def param_groups(model: nn.Module, weight_decay: float, scale_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices/kernels; none on biases, norms and the logit scales (which get their
    own group, learning rate times ``scale_lr_mult``, when that is not 1)."""
    decay, no_decay, scales = [], [], []
    for name, p in model.named_parameters():
        if "logit_scale" in name:
            (scales if scale_lr_mult != 1.0 else no_decay).append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0, "lr_mult": scale_lr_mult})
    return groups


def lr_factor(progress_fraction: float, warmup: float) -> float:
    """Linear warm-up then cosine decay, as a function of the schedule's progress in [0, 1]."""
    p = min(max(progress_fraction, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return p / warmup
    return 0.5 * (1 + math.cos(math.pi * (p - warmup) / max(1 - warmup, 1e-9)))


def epoch_order(seed: int, epoch: int, n: int, mirror_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic permutation [n] and mirror flags [n] of one epoch (identical on every rank)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g), torch.rand(n, generator=g) < mirror_p


def make_batch(pairs: TensorPairs, rows: torch.Tensor, flips: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gathers, models and descriptors of ``rows``, with the flagged pairs mirrored."""
    pre, vel = pairs.pre[rows], pairs.velocity[rows]
    if bool(flips.any()):
        mp, mv = mirror(pre[flips], vel[flips])
        pre[flips], vel[flips] = mp, mv
    mf = torch.channels_last if channels_last else torch.contiguous_format
    return (pre.to(device).contiguous(memory_format=mf), vel.to(device).contiguous(memory_format=mf),
            pairs.descriptors[rows].to(device))


@torch.no_grad()
def embed_pre(model: SeisBindModel, pairs: TensorPairs, rows: np.ndarray, device: torch.device,
              amp: bool, batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eval-mode embeddings (seismic from preprocessed gathers, velocity, physics) of ``rows``, float32 numpy."""
    was = model.training
    model.eval()
    out: list[list[np.ndarray]] = [[], [], []]
    for s in range(0, len(rows), batch):
        r = torch.as_tensor(rows[s:s + batch])
        with _autocast(device, amp):
            embs = model(pairs.pre[r].to(device), pairs.velocity[r].to(device), pairs.descriptors[r].to(device))[:3]
        for o, e in zip(out, embs):
            o.append(e.float().cpu().numpy())
    model.train(was)
    return tuple(np.concatenate(o) for o in out)  # type: ignore[return-value]


def train_loss(ddp: nn.Module, model: SeisBindModel, loss_fn: TriModalLoss, pre: torch.Tensor, vel: torch.Tensor,
               desc: torch.Tensor, device: torch.device, amp: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward one (local) batch through ``ddp`` (the model, or its DDP wrapper) and score it with ``loss_fn``.
    With lambda2 = 0 the physics encoder runs outside the graph (no gradient), only to log its loss."""
    with _autocast(device, amp):
        s_emb, v_emb, p_emb, scale = ddp(pre, vel, desc if loss_fn.lambda2 > 0 else None)
        if p_emb is None:
            with torch.no_grad():
                p_emb = model.physics(desc)
    return loss_fn(s_emb, v_emb, p_emb, scale, vel)


def _autocast(device: torch.device, amp: bool) -> Any:
    if not amp:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def validate(model: SeisBindModel, pairs: TensorPairs, rows: np.ndarray, device: torch.device, amp: bool
             ) -> dict[str, float]:
    """Validation R@1/R@5 (seismic->velocity, velocity->physics) on the held-out pairs."""
    if len(rows) == 0:
        return {}
    s, v, p = embed_pre(model, pairs, rows, device, amp)
    sv, vp = recall_at_k(true_ranks(s, v), (1, 5)), recall_at_k(true_ranks(v, p), (1, 5))
    return {"val_sv_R@1": sv["R@1"], "val_sv_R@5": sv["R@5"], "val_vp_R@1": vp["R@1"], "val_vp_R@5": vp["R@5"]}


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun (env WORLD_SIZE > 1) or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.set:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _agree(flags: list[bool], world: int, device: torch.device) -> list[bool]:
    """Logical OR of per-rank flags across ranks (so every rank stops at the same step)."""
    if world == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    tmp = out / (METRICS + ".partial")
    with open(tmp, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / METRICS)


def _summary(state: dict[str, Any], out: Path, precision: dict[str, bool], world: int, stopped: str
             ) -> dict[str, Any]:
    return {"run": str(out), "epochs": state["epoch"], "steps": state["global_step"],
            "train_minutes": state["elapsed_s"] / 60, "finished": state["finished"], "stopped": stopped,
            "last": state["history"][-1] if state["history"] else {}, "precision": precision, "world_size": world}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run ``cfg.out``; return a summary (epochs, steps, minutes, last metrics, state).

    Raises OpenFWIError (bad data, naming the file) before any training work, RunError for an incompatible
    run folder, ValueError for bad settings."""
    t_session = time.monotonic()
    rank, world, device = init_distributed(cfg.device)
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} torchrun ranks")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt = None
    if (out / CHECKPOINT).exists():
        ckpt = load_checkpoint(out)
        diff = cfg.resume_mismatch(ckpt["config"])
        if diff:
            raise RunError(f"{out}: holds a run with different settings ({', '.join(diff)}); "
                           "use another --out or the original settings to resume")
    if ckpt is not None and ckpt.get("finished"):
        old = TrainConfig.from_dict(ckpt["config"])
        if (old.epochs, old.time_budget_min) != (cfg.epochs, cfg.time_budget_min):
            raise RunError(f"{out}: training already finished with epochs={old.epochs}, time budget "
                           f"{old.time_budget_min} min; a finished schedule cannot be extended, use another --out")
        if rank == 0:
            log.info("%s: training already finished", out)
        return _summary(ckpt, out, ckpt.get("precision", {}), world, "already finished")
    model = create_model(cfg.model, seed=cfg.seed)
    datasets = open_folders(cfg.data, model.seismic, cfg.preprocess_cache)  # full validation before any work
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", cfg.to_dict())
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    n_total = sum(len(d) for d in datasets)
    bar = progress(n_total, "preprocess", enabled=cfg.progress and rank == 0)
    pairs = load_pairs(datasets, model.seismic, progress_cb=bar.update, cache_dir=cfg.preprocess_cache)
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
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.scale_lr_mult), lr=cfg.lr, betas=(0.9, 0.98),
                            eps=1e-6)
    steps_per_epoch = len(tr_rows) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "elapsed_s": 0.0, "history": [], "finished": False,
             "loss_sum": 0.0, "loss_count": 0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state.update({k: ckpt[k] for k in state if k in ckpt})
        if rank == 0:
            log.info("resuming %s at epoch %d step %d", out, state["epoch"], state["step_in_epoch"])
    ddp: nn.Module = model
    if world > 1 and device.type == "cuda":
        # batch statistics over the global batch; SyncBatchNorm needs CUDA (on CPU each rank normalises its own part)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.lambda2 == 0)
    loss_fn = TriModalLoss(cfg.lambda1, cfg.lambda2, cfg.soft_tau_mps)
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    elapsed0 = state["elapsed_s"]

    def elapsed() -> float:
        return elapsed0 + time.monotonic() - t_session

    def save() -> None:
        if rank == 0:
            state["elapsed_s"] = elapsed()
            out.mkdir(parents=True, exist_ok=True)
            save_atomic(out / CHECKPOINT, {**state, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                           "config": cfg.to_dict(), "data": data_summary,
                                           "precision": {"bf16": amp, "channels_last": channels_last},
                                           "world_size": world, "train_rows": len(tr_rows), "val_rows": len(val_rows)})
            _write_metrics(out, state["history"])
        if world > 1:
            dist.barrier()

    local_b = cfg.batch_size // world
    bar = progress(total_steps, "train", initial=state["global_step"], enabled=cfg.progress and rank == 0)
    session_steps = 0
    last_ckpt = time.monotonic()
    stop_reason = None
    model.train()
    with _StopFlag() as flag:
        while not state["finished"] and state["epoch"] < cfg.epochs:
            perm, flips = epoch_order(cfg.seed, state["epoch"], len(tr_rows), cfg.mirror_p)
            while state["step_in_epoch"] < steps_per_epoch:
                sl = slice(state["step_in_epoch"] * cfg.batch_size, (state["step_in_epoch"] + 1) * cfg.batch_size)
                glob = perm[sl]
                mine = slice(rank * local_b, (rank + 1) * local_b)
                rows = torch.as_tensor(tr_rows)[glob[mine]]
                pre, vel, desc = make_batch(pairs, rows, flips[glob[mine]], device, channels_last)
                frac = state["global_step"] / total_steps
                if budget_s:
                    frac = max(frac, elapsed() / budget_s)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(frac, cfg.warmup_fraction) * g.get("lr_mult", 1.0)
                loss, parts = train_loss(ddp, model, loss_fn, pre, vel, desc, device, amp)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if "logit_scale" in name:
                            p.clamp_(0, MAX_LOGIT_SCALE)
                state["loss_sum"] += float(loss.detach())
                state["loss_count"] += 1
                last_loss = float(loss.detach())
                state["step_in_epoch"] += 1
                state["global_step"] += 1
                session_steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", T=f"{1 / float(model.scale().detach()):.4f}")
                want_ckpt = time.monotonic() - last_ckpt > cfg.checkpoint_every_min * 60
                stop, over, ckpt_now, hit_max = _agree(
                    [flag.set, bool(budget_s and elapsed() >= budget_s), want_ckpt,
                     cfg.max_steps is not None and session_steps >= cfg.max_steps], world, device)
                if stop or hit_max:
                    stop_reason = "interrupted" if stop else "max_steps"
                    break
                if over:
                    stop_reason = "time_budget"
                    break
                if ckpt_now:
                    save()
                    last_ckpt = time.monotonic()
            if stop_reason in ("interrupted", "max_steps"):
                break
            epoch_done = state["step_in_epoch"] >= steps_per_epoch
            row = {"epoch": state["epoch"] + 1 if epoch_done else state["epoch"] + state["step_in_epoch"] / steps_per_epoch,
                   "step": state["global_step"],
                   "loss": state["loss_sum"] / state["loss_count"] if state["loss_count"] else None,
                   "logit_scale": float(model.scale().detach()), "temperature": 1 / float(model.scale().detach()),
                   "logit_scale_vp": float(model.scale_vp().detach()),
                   "lr": opt.param_groups[0]["lr"], "elapsed_min": elapsed() / 60}
            row.update(validate(model, pairs, val_rows, device, amp))
            state["loss_sum"], state["loss_count"] = 0.0, 0
            state["history"].append(row)
            if rank == 0:
                log.info("epoch %s", json.dumps(row))
                print(f"epoch {row['epoch']:.2f}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "epoch"),
                    file=sys.stderr, flush=True)
            if epoch_done:
                state["epoch"] += 1
                state["step_in_epoch"] = 0
            if stop_reason == "time_budget" or state["epoch"] >= cfg.epochs:
                state["finished"] = True
            save()
            last_ckpt = time.monotonic()
            if state["finished"]:
                break
        if stop_reason in ("interrupted", "max_steps"):
            save()
    bar.close()
    if world > 1:
        dist.destroy_process_group()
    if rank != 0:
        state["elapsed_s"] = elapsed()
    summary = _summary(state, out, {"bf16": amp, "channels_last": channels_last}, world, stop_reason or "epochs")
    if stop_reason == "interrupted":
        raise KeyboardInterrupt(f"training interrupted; checkpoint saved in {out}, rerun the command to resume")
    return summary
