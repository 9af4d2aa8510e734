"""DistributedDataParallel on CPU (gloo): with embeddings gathered with gradient, the loss and the gradients of
2 ranks equal those of one process on the same global batch; and `seisbind train` runs under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.encoders import create_model
from model.export import synthetic_inputs
from model.loss import TriModalLoss
from model.train import train_loss
from tests.model_fixtures import write_dataset

torch.set_num_threads(1)
GLOBAL_BATCH = 8


def _setup(lambda2: float, soft_tau: float = 0.0):
    model = create_model(ModelConfig.tiny(), seed=0)
    x = synthetic_inputs(GLOBAL_BATCH, seed=3)
    model.physics.set_stats(x["physics"].mean(0), x["physics"].std(0) + 1e-3)
    # BatchNorm uses its running statistics (eval mode): per-rank batch statistics would otherwise differ from
    # the global batch's by construction (SyncBatchNorm needs CUDA); everything else is the training path.
    model.eval()
    pre = model.seismic.preprocess(torch.from_numpy(x["seismic"]))
    loss = TriModalLoss(1.0, lambda2, soft_tau)
    return model, pre, torch.from_numpy(x["velocity"]), torch.from_numpy(x["physics"]), loss


def _worker(rank: int, world: int, init_file: str, out: str, lambda2: float, soft_tau: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, pre, vel, desc, loss_fn = _setup(lambda2, soft_tau)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=lambda2 == 0)
    b = GLOBAL_BATCH // world
    sl = slice(rank * b, (rank + 1) * b)
    loss, _ = train_loss(ddp, model, loss_fn, pre[sl], vel[sl], desc[sl], torch.device("cpu"), amp=False)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    if rank == 0:
        torch.save({"loss": mean_loss, "grads": {n: None if p.grad is None else p.grad.clone()
                                                 for n, p in model.named_parameters()}}, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize(("lambda2", "soft_tau"), [(0.1, 0.0), (0.0, 0.0), (0.1, 300.0)])
def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path, lambda2, soft_tau):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out), lambda2, soft_tau), nprocs=2, join=True)
    got = torch.load(out)
    model, pre, vel, desc, loss_fn = _setup(lambda2, soft_tau)
    loss, _ = train_loss(model, model, loss_fn, pre, vel, desc, torch.device("cpu"), amp=False)
    loss.backward()
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    checked = 0
    for name, p in model.named_parameters():
        g = got["grads"][name]
        if p.grad is None:
            assert g is None or not g.abs().any(), name
            continue
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6, msg=name)
        checked += 1
    assert checked > 20
    if lambda2 == 0:
        assert all(got["grads"][n] is None or not got["grads"][n].abs().any()
                   for n, _ in model.physics.named_parameters(prefix="physics"))


def test_seisbind_train_runs_under_torchrun(tmp_path):
    data = write_dataset(tmp_path / "pairs", 32, seed=0)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(ModelConfig.tiny().to_dict()))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cli.main", "train", "--data", str(data), "--out", str(out), "--epochs", "2",
           "--batch-size", "8", "--amp", "off", "--threads", "1", "--model-config", str(cfg), "--val-fraction", "0.25"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parents[2])
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = load_checkpoint(out)
    assert ckpt["world_size"] == 2 and ckpt["finished"] and ckpt["global_step"] == 2 * (24 // 8)
    assert all(np.isfinite(r["loss"]) for r in ckpt["history"])
