"""What POST /refine works out before anything is queued: the method and start kind, the limits, and the start
models from the retrieved neighbours (seisbind.start_models; the learned refiner of the encoder bundle where asked).
Also the shaping of a job's record (service.refine_queue) into the GET /refine/{id} document. Numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from seisbind.descriptors import as_dicts, compute_descriptors
from seisbind.start_models import start_model

from service.inputs import InputError
from service.refine_queue import load_npy


class Refiner(Protocol):
    """The learned refiner of an encoder bundle (seisbind.refiner.LearnedRefiner)."""

    k: int

    def refine(self, gathers: np.ndarray, models: np.ndarray, scores: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Plan:
    """A checked refinement request: method, start kind, neighbours to retrieve, FWI iterations."""

    method: str
    start: str
    k: int
    search_k: int
    iterations: int


def plan(fields: dict[str, Any], refiner: Refiner | None, gathers: int, *, default_iterations: int,
         max_iterations: int, max_gathers: int) -> Plan:
    """Resolve the defaults and check the combination (InputError, 422, naming the problem)."""
    method = fields.get("method") or "fwi"  # the defaults of `seisbind refine`
    start = fields.get("start") or {"learned": "learned", "both": "learned", "check": "bestfit"}.get(method, "topk")
    if method == "both" and start != "learned":
        raise InputError(f"method 'both' runs FWI from the learned refiner's model; start {start!r} goes with method "
                         "'fwi'")
    if method == "learned" and fields.get("start") not in (None, "learned"):
        raise InputError("method 'learned' returns the learned refiner's model; a start model only applies to FWI "
                         "(method 'fwi' or 'both')")
    if method == "check" and (start != "bestfit" or fields.get("iterations") is not None):
        raise InputError("method 'check' returns the retrieved model whose simulated data fit best, without FWI: a "
                         "start model other than 'bestfit' and iterations only apply to methods 'fwi' and 'both'")
    if (method in ("learned", "both") or start == "learned") and refiner is None:
        raise InputError("this service's encoder bundle has no learned refiner (refiner.onnx): use method 'fwi' "
                         "with start 'top1', 'topk', 'smooth' or 'bestfit', or method 'check'")
    iterations = fields.get("iterations")
    iterations = 0 if method == "check" else default_iterations if iterations is None else iterations
    if method not in ("learned", "check") and not 1 <= iterations <= max_iterations:
        raise InputError(f"iterations={iterations} is out of range: need 1 <= iterations <= {max_iterations} "
                         "(SEISBIND_REFINE_MAX_ITERATIONS)")
    if method != "learned" and gathers > max_gathers:
        raise InputError(f"{gathers} gathers in one refinement job; at most {max_gathers} are accepted "
                         "(SEISBIND_REFINE_MAX_GATHERS): split the batch")
    k = int(fields["k"])
    need = refiner.k if refiner is not None and start == "learned" else 0
    return Plan(method, start, k, max(k, need), iterations)


def learned_models(refiner: Refiner, gathers: np.ndarray, models: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The learned refiner's models [B,70,70] m/s from its k nearest neighbours (models [B,K,70,70], scores [B,K],
    K >= k: the refiner takes the best k)."""
    return np.asarray(refiner.refine(gathers, models, scores), np.float32)


def start_models(p: Plan, gathers: np.ndarray, models: np.ndarray, scores: np.ndarray,
                 refiner: Refiner | None) -> np.ndarray:
    """Start models [B,70,70] m/s of ``p.start`` from each gather's neighbours (models [B,K,70,70] best first,
    scores [B,K], K >= p.k), clipped to 1500-4500 m/s. For ``bestfit`` the top-1 stands in: the worker, which can
    simulate the neighbours, replaces it with the one whose data fit best."""
    learned = learned_models(refiner, gathers, models, scores) if p.start == "learned" and refiner else None
    kind = "top1" if p.start == "bestfit" else p.start
    return np.stack([start_model(kind, models[b, :p.k], scores[b, :p.k],
                                 None if learned is None else learned[b]) for b in range(len(gathers))])


def model_entry(model: np.ndarray, start_ids: list[str], **fwi: Any) -> dict[str, Any]:
    """One refined model as the API reports it: nested lists, its descriptors, the start's neighbours."""
    descriptors = as_dicts(compute_descriptors(np.asarray(model, np.float32)[None, None]))[0]
    return {"velocity_model": np.asarray(model, np.float32).tolist(), "descriptors": descriptors,
            "start_ids": list(start_ids), **fwi}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _neighbour_fit(result: dict[str, Any], b: int) -> dict[str, Any]:
    """The neighbours' data misfits of gather ``b`` and the best one's rank, where the worker reported them."""
    misfits = result.get("neighbour_misfits")
    if not misfits or b >= len(misfits):
        return {}
    return {"neighbour_misfits": [float(x) for x in misfits[b]], "best_fit_rank": int(np.argmin(misfits[b]))}


def job_document(record: dict[str, Any]) -> dict[str, Any]:
    """A job record (RefineQueue.status) -> the GET /refine/{id} document (service.refine_schemas.RefineJob)."""
    meta, result = record["meta"], record["result"]
    doc = {"job_id": record["job_id"], "state": record["state"], "progress": float(meta.get("progress", 0.0)),
           "iteration": int(meta.get("iteration", 0)), "gather": int(meta.get("gather", 0)),
           "gathers": int(meta.get("gathers", 1)), "misfit": [float(x) for x in meta.get("misfit", [])],
           "attempt": int(record["attempt"]), "method": meta.get("method", "fwi"),
           "start": meta.get("start", "topk"), "iterations": int(meta.get("iterations", 0)),
           "cancel_requested": record["cancel_requested"], "error": record["error"],
           "created_at": _iso(record["created_at"]), "started_at": _iso(record["started_at"]),
           "ended_at": _iso(record["ended_at"])}
    if isinstance(result, dict) and "models" in result:
        ids = meta.get("start_ids", [])
        models = load_npy(result["models"])
        starts = load_npy(result["starts"]) if "starts" in result else [None] * len(models)
        entries = [model_entry(m, ids[b] if b < len(ids) else [], misfit=result["misfit"][b],
                               start_model=None if starts[b] is None else np.asarray(starts[b]).tolist(),
                               start_misfit=result["start_misfit"][b], final_misfit=result["final_misfit"][b],
                               **_neighbour_fit(result, b),
                               iterations=result["iterations"][b], seconds=result["seconds"][b],
                               stopped=result["stopped"][b]) for b, m in enumerate(models)]
        if entries:
            doc["result"] = entries[0]
            if len(entries) > 1:
                doc["results"] = entries
    return doc
