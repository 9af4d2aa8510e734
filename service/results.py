"""Search hits -> response payloads: neighbour lists and descriptors inferred from the k nearest entries."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from seisbind.descriptors import DESCRIPTOR_UNITS
from seisbind.neighbours import Weighting, consensus_pick, infer_descriptors
from seisbind.readout import blend


class IndexView(Protocol):
    """What the response builders read from a loaded index (index.searcher.Searcher satisfies it)."""

    @property
    def ids(self) -> Sequence[str]: ...

    @property
    def sources(self) -> Sequence[tuple[str, int]]: ...

    @property
    def descriptors(self) -> np.ndarray: ...

    def velocity_models(self, I: np.ndarray) -> np.ndarray: ...  # noqa: E741 - faiss naming


@lru_cache(maxsize=4096)
def public_file(label: str, bank_path: str | None) -> str:
    """A bank file as responses show it: its path relative to the bank it was indexed from ("model/model3.npy";
    the file name for a single-file bank; "bank.zip:member.npy" for a zip member), never a path on the server."""
    head, sep, _ = label.partition(":")
    if sep and head.endswith(".zip") and "/" not in head:
        return label
    path = Path(label)
    if bank_path:
        bank = Path(bank_path)
        try:
            rel = path.relative_to(bank)
            return rel.as_posix() if rel.parts else path.name
        except ValueError:
            parts = path.parts
            if bank.name in parts[:-1]:  # indexed from a relative path: cut at the bank's folder
                i = len(parts) - 1 - parts[::-1].index(bank.name)
                return Path(*parts[i + 1:]).as_posix()
    return path.name


def neighbours(view: IndexView, D: np.ndarray, I: np.ndarray, names: Sequence[str],
               include_models: bool = False) -> list[dict[str, Any]]:
    """One result per query row: ``neighbors`` (rank, id, score (cosine), source (file relative to the bank, row),
    descriptors by name and, with ``include_models``, the velocity model as nested lists [depth 70][lateral 70] in
    m/s) and ``consensus_rank``: the rank of the neighbour whose model differs least from all the row's neighbours'
    models (``seisbind.neighbours.consensus_pick``, plain weights: the pick evaluation measures; null for a row
    without neighbours). The models are read once per row for both. Entries FAISS could not fill (id -1) are left
    out."""
    bank = getattr(getattr(view, "manifest", None), "bank_path", None)
    out = []
    for d_row, i_row in zip(D, I):
        keep = i_row >= 0
        d_row, i_row = d_row[keep], i_row[keep]
        models = view.velocity_models(i_row) if len(i_row) else None
        hits = []
        for rank, (score, i) in enumerate(zip(d_row.tolist(), i_row.tolist()), start=1):
            file, row = view.sources[i]
            hit: dict[str, Any] = {
                "rank": rank, "id": view.ids[i], "score": score,
                "source": {"file": public_file(str(file), bank), "row": int(row)},
                "descriptors": dict(zip(names, view.descriptors[i].tolist())),
            }
            if include_models and models is not None:
                hit["velocity_model"] = models[rank - 1, 0].tolist()
            hits.append(hit)
        consensus = None if models is None else int(consensus_pick(models[None], d_row[None])[0]) + 1
        out.append({"neighbors": hits, "consensus_rank": consensus})
    return out


def inferred_descriptors(view: IndexView, D: np.ndarray, I: np.ndarray, names: Sequence[str],  # noqa: E741
                         weighting: Weighting, readout: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One result per query row: each descriptor as {value, std, unit} (``seisbind.neighbours.infer_descriptors``,
    the function evaluation measures) and the neighbours' ids and scores. With ``readout`` ([b, len(names)]: the
    bundle's descriptor readout of each query) the value is ``seisbind.readout.blend`` of the two, and each
    descriptor also shows the ``neighbours`` and ``readout`` estimates it blends; ``std`` stays the neighbours'
    spread."""
    values, stds = infer_descriptors(view.descriptors, D, I, weighting)
    blended = None if readout is None else blend(values, readout)
    out = []
    for q, (d_row, i_row) in enumerate(zip(D, I)):
        keep = i_row >= 0
        estimates = {}
        for j, name in enumerate(names):
            e = {"value": float(values[q, j]), "std": float(stds[q, j]), "unit": DESCRIPTOR_UNITS.get(name, "")}
            if blended is not None and readout is not None:
                e.update(value=float(blended[q, j]), neighbours=float(values[q, j]), readout=float(readout[q, j]))
            estimates[name] = e
        out.append({"descriptors": estimates, "neighbors": [view.ids[i] for i in i_row[keep].tolist()],
                    "scores": d_row[keep].tolist()})
    return out


def with_warnings(results: list[dict[str, Any]], warnings: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Add each result's ``warnings`` (service.plausibility) to it, only where there are any."""
    for result, notes in zip(results, warnings):
        if notes:
            result["warnings"] = list(notes)
    return results


def with_confidence(results: list[dict[str, Any]], confidence: Sequence[float | None], ood: Sequence[bool],
                    warnings: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Add each seismic query's ``confidence`` (null without a calibration: /v1/info ``calibration`` is null too)
    and ``out_of_distribution`` (``seisbind.calibration.assess``'s flag, or a plausibility warning about the
    gather), then its ``warnings``."""
    notes = [list(w) for w in warnings] + [[] for _ in range(len(results) - len(warnings))]
    for i, result in enumerate(results):
        result["confidence"] = confidence[i]
        result["out_of_distribution"] = bool(ood[i] or notes[i])
    return with_warnings(results, notes)
