"""Training data of the learned refiner: paired folders preprocessed by the refiner's front end, every gather and
model embedded by the encoder bundle's own ONNX encoders, and each pair's k neighbours retrieved by cosine from a
bank that never holds the pair's own model (training pairs: the other training models; held-out pairs: the
training models only)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seisbind.bundle import EncoderBundle
from seisbind.neighbours import exact_top_k, neighbour_weights
from seisbind.openfwi import PairedDataset
from seisbind.progress import progress

from model.data import load_pairs, open_folders, split_indices
from model.refiner import RefinerNet


@dataclass
class NeighbourSplit:
    """One split's pairs with their neighbours. pre: [n, 5, T', 70] gathers decimated by the refiner's front end
    (still linear in the amplitudes: augmented, then normalised per batch); truth: [n, 70, 70] m/s;
    scores: [n, k] cosine similarities and rows: [n, k] rows of the bank (the training split), best first;
    pairs: the rows of these pairs in the whole data set."""

    pre: torch.Tensor
    truth: torch.Tensor
    scores: torch.Tensor
    rows: torch.Tensor
    pairs: np.ndarray

    def __len__(self) -> int:
        return len(self.truth)


@dataclass
class RefinerData:
    """Training and validation splits over one bank (``bank`` [n_train, 70, 70] m/s, the training models)."""

    train: NeighbourSplit
    val: NeighbourSplit
    bank: torch.Tensor
    datasets: list[PairedDataset]


def embed_datasets(bundle: EncoderBundle, datasets: Sequence[PairedDataset], chunk: int = 32
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(seismic embeddings, velocity embeddings) [N, dim] of every pair, with the bundle's ONNX encoders."""
    total = sum(len(d) for d in datasets)
    seis, vel = [], []
    with progress(total, "embedding pairs") as bar:
        for ds in datasets:
            for d, m in zip(ds.data, ds.models):
                for s in range(0, len(m), chunk):
                    seis.append(bundle.seismic.encode(np.asarray(d[s:s + chunk], np.float32)))
                    vel.append(bundle.velocity.encode(np.asarray(m[s:s + chunk], np.float32)))
                    bar.update(len(seis[-1]))
    return np.concatenate(seis), np.concatenate(vel)


def neighbours_excluding(queries: np.ndarray, bank: np.ndarray, k: int, own: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k bank rows by cosine for each query, best first, leaving out bank row ``own[i]`` for query i (its own
    model) when ``own`` is given: (scores [nq, k] float32, rows [nq, k] int64).

    Raises:
        ValueError: the bank has fewer than k rows besides the query's own.
    """
    need = k + (own is not None)
    if len(bank) < need:
        raise ValueError(f"a bank of {len(bank)} models is too small for k={k} neighbours per pair")
    D, I = exact_top_k(queries, bank, need)  # noqa: E741 - faiss naming
    if own is not None:
        is_own = I == np.asarray(own)[:, None]
        order = np.argsort(is_own, axis=1, kind="stable")  # the own row (if retrieved) goes last
        D, I = np.take_along_axis(D, order, 1)[:, :k], np.take_along_axis(I, order, 1)[:, :k]  # noqa: E741
    return D, I


def _split(pre: torch.Tensor, truth: torch.Tensor, pairs: np.ndarray, D: np.ndarray, I: np.ndarray  # noqa: E741
           ) -> NeighbourSplit:
    idx = torch.from_numpy(pairs)
    return NeighbourSplit(pre[idx], truth[idx], torch.from_numpy(D.astype(np.float32)), torch.from_numpy(I), pairs)


def load_refiner_data(folders: Sequence[str | os.PathLike[str]], bundle: EncoderBundle, net: RefinerNet, k: int,
                      val_fraction: float, seed: int) -> RefinerData:
    """Open and check the folders, decimate the gathers with the refiner's front end, embed everything with the
    bundle, split off the held-out pairs and retrieve every pair's k neighbours from the training models."""
    datasets = open_folders(list(folders))
    pairs = load_pairs(datasets, net.front, linear=True)
    seis, vel = embed_datasets(bundle, datasets)
    train_idx, val_idx = split_indices(len(pairs), val_fraction, seed)
    if len(val_idx) == 0:
        raise ValueError(f"{len(pairs)} pairs and val_fraction={val_fraction} leave no pair for validation")
    bank_emb = vel[train_idx]
    D_tr, I_tr = neighbours_excluding(seis[train_idx], bank_emb, k, own=np.arange(len(train_idx)))
    D_va, I_va = neighbours_excluding(seis[val_idx], bank_emb, k)
    truth = pairs.velocity[:, 0]
    return RefinerData(_split(pairs.pre, truth, train_idx, D_tr, I_tr), _split(pairs.pre, truth, val_idx, D_va, I_va),
                       truth[torch.from_numpy(train_idx)].contiguous(), list(datasets))


def baseline_errors(split: NeighbourSplit, bank: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-pair mean absolute error (m/s) over a split of the retrieved top-1 (``top1``) and of the
    similarity-weighted top-k mean (``topk_mean``), computed with seisbind.neighbours (numpy), independently of the
    network."""
    models = bank[split.rows].numpy().astype(np.float64)
    truth = split.truth.numpy().astype(np.float64)
    scores = split.scores.numpy()
    top1 = np.abs(models[:, 0] - truth).mean(axis=(1, 2))
    means = np.stack([np.clip(np.tensordot(neighbour_weights(s, "similarity"), m, axes=1), 1500, 4500)
                      for s, m in zip(scores, models)])
    return {"top1": top1, "topk_mean": np.abs(means - truth).mean(axis=(1, 2))}
