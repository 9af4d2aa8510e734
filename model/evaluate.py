"""Evaluation protocols P1, P1-large and P2 of docs/evaluation.md (``seisbind evaluate``).

Works on a training run (torch, from its checkpoint) or an encoder bundle (ONNX Runtime); writes report.json
(the keys of docs/benchmarks.md), report.md (the letter's table beside ours) and figures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.acquisition import V_MAX, V_MIN
from seisbind.bundle import CPU, MANIFEST, EncoderBundle
from seisbind.descriptors import (
    DESCRIPTOR_NAMES,
    DESCRIPTOR_UNITS,
    compute_descriptors,
    mean_absolute_errors,
    mean_relative_error,
)
from seisbind.files import write_json_atomic, write_text_atomic
from seisbind.neighbours import Weighting, consensus_pick, exact_top_k, infer_descriptors, l2_top_k
from seisbind.openfwi import ModelSet, OpenFWIError, PairedDataset, open_dataset, read_models
from seisbind.progress import progress
from seisbind.provenance import REPO, portable_path
from seisbind.readout import DescriptorReadout, blend
from seisbind.retrieval_metrics import KS, pos_neg_similarity, retrieval_report

LETTER = {
    "seismic_to_velocity": {"R@1": 0.578, "R@5": 0.861, "R@10": 0.935, "mean_pos_sim": 0.616, "mean_neg_sim": -0.007},
    "velocity_to_physics": {"R@1": 0.681, "R@5": 0.915, "R@10": 0.961, "mean_pos_sim": 0.638, "mean_neg_sim": -0.001},
    "descriptor_mre": 0.0912,
}
"""The SeisBind letter's figures (Liang & Matsushima, 2026), on its own OpenFWI test split."""

Encode = Callable[[np.ndarray], np.ndarray]


class Embedder:
    """Batched encoders of the three modalities, physical units in, L2-normalised float32 [n, d] out."""

    def __init__(self, seismic: Encode, velocity: Encode, physics: Encode, info: dict[str, Any],
                 readout: DescriptorReadout | None = None) -> None:
        self.encode = {"seismic": seismic, "velocity": velocity, "physics": physics}
        self.info = info
        self.readout = readout
        """A bundle's descriptor readout (seisbind.readout), None for a training run or a bundle without one."""


def torch_embedder(run: Path, device: str = "cpu") -> Embedder:
    """Encoders of a training run's latest checkpoint (torch, float32, eval mode)."""
    import torch

    from model.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt).to(device)

    def wrap(enc: Any) -> Encode:
        def f(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return enc(torch.from_numpy(np.array(x, dtype=np.float32)).to(device)).float().cpu().numpy()
        return f

    info = {"kind": "run", "path": portable_path(run), "train_minutes": ckpt["elapsed_s"] / 60,
            "config": ckpt["config"],
            "data": ckpt.get("data"), "epochs": ckpt["epoch"], "steps": ckpt["global_step"]}
    return Embedder(wrap(model.seismic), wrap(model.velocity), wrap(model.physics), info)


def onnx_embedder(bundle: Path, threads: int | None = None) -> Embedder:
    """Encoders of an encoder bundle, run by ONNX Runtime on the CPU as the service runs them."""
    enc = EncoderBundle(bundle, providers=[CPU], intra_op_threads=threads)
    training = enc.manifest.training
    info = {"kind": "bundle", "path": portable_path(bundle), "bundle_id": enc.bundle_id,
            "train_minutes": training.get("train_minutes"), "config": training.get("config"),
            "data": training.get("data")}
    return Embedder(enc.seismic.encode, enc.velocity.encode, enc.physics.encode, info, enc.readout)


def load_embedder(run_or_bundle: str | os.PathLike[str]) -> Embedder:
    """A bundle (folder with manifest.json) or a training run (folder with checkpoint.pt)."""
    p = Path(run_or_bundle)
    if (p / MANIFEST).is_file():
        return onnx_embedder(p)
    if (p / "checkpoint.pt").is_file():
        return torch_embedder(p)
    raise FileNotFoundError(f"{p}: neither an encoder bundle (manifest.json) nor a training run (checkpoint.pt)")


def _chunks(arrays: Sequence[np.ndarray], batch: int) -> Iterator[np.ndarray]:
    for a in arrays:
        for s in range(0, len(a), batch):
            yield np.asarray(a[s:s + batch])


def embed_arrays(encode: Encode, arrays: Sequence[np.ndarray], batch: int, desc: str) -> np.ndarray:
    """Encode consecutive rows of (memory-mapped) arrays in batches; [sum of rows, d] float32."""
    n = sum(len(a) for a in arrays)
    bar = progress(n, desc)
    out = []
    for x in _chunks(arrays, batch):
        out.append(encode(x))
        bar.update(len(x))
    bar.close()
    return np.concatenate(out).astype(np.float32)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=V_MAX - V_MIN))


def _single_answers(bank_models: np.ndarray, I: np.ndarray, D: np.ndarray, test_models: np.ndarray,  # noqa: E741
                    weighting: Weighting, chunk: int = 512) -> tuple[np.ndarray, ...]:
    """Per query: the top-1's MAE and SSIM, the consensus pick's MAE, and the pick ([nq] each), gathering the
    neighbours' models ``chunk`` queries at a time (all of them at once would be nq x k models)."""
    parts: list[tuple[np.ndarray, ...]] = []
    for s in range(0, len(I), chunk):
        Ic, truth = I[s:s + chunk], test_models[s:s + chunk].astype(np.float64)
        top1 = bank_models[Ic[:, 0]]  # [c, 1, 70, 70]
        pick = consensus_pick(bank_models[Ic], D[s:s + chunk], weighting)
        consensus = bank_models[np.take_along_axis(Ic, pick[:, None], 1)[:, 0]]
        parts.append((np.abs(top1 - truth).mean(axis=(1, 2, 3)),
                      np.array([_ssim(top1[i, 0], truth[i, 0]) for i in range(len(Ic))]),
                      np.abs(consensus - truth).mean(axis=(1, 2, 3)), pick))
    return tuple(np.concatenate(column) for column in zip(*parts))


def p2_report(S: np.ndarray, VB: np.ndarray, bank_desc: np.ndarray, bank_models: np.ndarray,
              test_desc: np.ndarray, test_models: np.ndarray, k: int = 5,
              weighting: Weighting = "mean",
              readout_values: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """P2: descriptors from the k nearest bank models of each query (the service's ``infer_descriptors``), the
    top-1 model's MAE and SSIM, and the MAE of the ``consensus`` pick among the k
    (``seisbind.neighbours.consensus_pick``) with the share of queries where it is not the top-1; with
    ``readout_values`` (the bundle's readout of each query, [nq, 8]) also the ``blend`` the service returns by
    default (seisbind.readout.blend) and the readout alone.

    Returns the report and the predicted descriptors [nq, 8]: the blend when there is a readout (what the service
    answers by default), else the neighbours' estimate."""
    D, I = exact_top_k(S, VB, k)  # noqa: E741 - faiss naming
    pred, _ = infer_descriptors(bank_desc, D, I, weighting)
    top1_mae, ssim, consensus_mae, pick = _single_answers(bank_models, I, D, test_models, weighting)
    rep: dict[str, Any] = {"k": k, "weighting": weighting, "descriptor_mre": mean_relative_error(pred, test_desc),
                           "descriptor_mae": mean_absolute_errors(pred, test_desc),
                           "top1_mae_mps": float(top1_mae.mean()), "top1_ssim": float(ssim.mean()),
                           "bank_size": int(len(VB)),
                           "consensus": {"mae_mps": float(consensus_mae.mean()), "not_top1": float(np.mean(pick > 0))}}
    if readout_values is not None:
        mixed = blend(pred, readout_values)
        rep["blend"] = {"descriptor_mre": mean_relative_error(mixed, test_desc),
                        "descriptor_mae": mean_absolute_errors(mixed, test_desc),
                        "readout_descriptor_mre": mean_relative_error(readout_values, test_desc)}
        pred = mixed
    return rep, pred


def pixel_nearest(bank_models: np.ndarray, test_models: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The k bank models nearest to each TRUE model by pixel L2 (rows [n, k], nearest first) and the nearest one's
    mean absolute error [n] (m/s): what a perfect retriever could return."""
    bank = bank_models.reshape(len(bank_models), -1).astype(np.float32)
    q = test_models.reshape(len(test_models), -1).astype(np.float32)
    idx = l2_top_k(q, bank, k)
    return idx, np.abs(bank[idx[:, 0]].astype(np.float64) - q).mean(axis=1)


def bank_limits(bank_desc: np.ndarray, bank_models: np.ndarray, test_desc: np.ndarray, test_models: np.ndarray,
                k: int = 5) -> dict[str, float]:
    """What the bank allows at best, beside P2: the mean descriptors of the k bank models nearest to each TRUE model
    by pixel L2 (``oracle_descriptor_mre``) and the nearest one's MAE (``oracle_top1_mae_mps``): what a perfect
    retriever could return; and the bank's mean descriptors for every query (``mean_predictor_mre``)."""
    idx, top1_abs = pixel_nearest(bank_models, test_models, k)
    mean_desc = np.broadcast_to(bank_desc.mean(0), test_desc.shape)
    return {"oracle_descriptor_mre": mean_relative_error(bank_desc[idx].mean(1), test_desc),
            "oracle_top1_mae_mps": float(top1_abs.mean()),
            "mean_predictor_mre": mean_relative_error(mean_desc, test_desc), "oracle_k": k}


def open_tests(folders: Sequence[str | os.PathLike[str]]) -> list[PairedDataset]:
    """Validated paired test folders."""
    if not folders:
        raise OpenFWIError("no test folder given (--test DIR)")
    return [open_dataset(f, check_values=True) for f in folders]


def open_banks(folders: Sequence[str | os.PathLike[str]]) -> ModelSet:
    """Velocity models of every bank folder/file, in order."""
    parts = []
    for f in folders:
        parts += read_models(f).parts
    if not parts:
        raise OpenFWIError("the bank holds no velocity models")
    return ModelSet(parts)


def evaluate(emb: Embedder, test_dirs: Sequence[str | os.PathLike[str]], bank_dirs: Sequence[str | os.PathLike[str]],
             out_dir: str | os.PathLike[str], *, k: int = 5, batch: int = 64, figures: bool = True,
             n_examples: int = 4) -> dict[str, Any]:
    """Run P1, P1-large and P2 and write report.json, report.md and figures into ``out_dir``; return the report."""
    tests = open_tests(test_dirs)
    bank = open_banks(bank_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test_models = np.concatenate([np.asarray(m) for d in tests for m in d.models])
    test_desc = compute_descriptors(test_models)
    bank_models = bank.array()
    bank_desc = np.concatenate([compute_descriptors(b) for b in bank.batches(2000)])
    enc = emb.encode
    S = embed_arrays(enc["seismic"], [g for d in tests for g in d.data], batch, "embed test gathers")
    V = embed_arrays(enc["velocity"], [test_models], batch * 4, "embed test models")
    P = embed_arrays(enc["physics"], [test_desc.astype(np.float32)], 4096, "embed test descriptors")
    VB = embed_arrays(enc["velocity"], [bank_models], batch * 4, "embed bank models")
    PB = embed_arrays(enc["physics"], [bank_desc.astype(np.float32)], 4096, "embed bank descriptors")
    p1 = {"seismic_to_velocity": retrieval_report(S, V), "velocity_to_physics": retrieval_report(V, P),
          "gallery_size": int(len(V))}
    G, GP = np.concatenate([V, VB]), np.concatenate([P, PB])
    p1_large = {"seismic_to_velocity": retrieval_report(S, G), "velocity_to_physics": retrieval_report(V, GP),
                "gallery_size": int(len(G))}
    readout = emb.readout.predict(S) if emb.readout is not None else None
    p2, pred = p2_report(S, VB, bank_desc, bank_models, test_desc, test_models, k=k, readout_values=readout)
    report = {
        "p1": p1, "p1_large": p1_large, "p2": p2,
        "p2_limits": bank_limits(bank_desc, bank_models, test_desc, test_models, k),
        "train_minutes": emb.info.get("train_minutes"),
        "queries": int(len(S)),
        "test": [portable_path(t) for t in test_dirs], "bank": [portable_path(b) for b in bank_dirs],
        "encoders": {k_: v for k_, v in emb.info.items() if k_ != "config"},
        "letter": LETTER,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if figures:
        from model.figures import descriptor_scatter, retrieval_examples, similarity_histograms

        offsets = np.cumsum([0] + [len(g) for d in tests for g in d.data])
        arrays = [g for d in tests for g in d.data]

        def get_gather(i: int) -> np.ndarray:
            f = int(np.searchsorted(offsets, i, side="right") - 1)
            return np.asarray(arrays[f][i - offsets[f]])

        retrieval_examples(out / "retrieval_examples.png", get_gather, test_models, S, V, n_examples)
        similarity_histograms(out / "similarity_histograms.png", {"seismic-velocity": pos_neg_similarity(S, V),
                                                                  "velocity-physics": pos_neg_similarity(V, P)})
        descriptor_scatter(out / "descriptors_pred_vs_true.png", pred, test_desc)
        report["figures"] = ["retrieval_examples.png", "similarity_histograms.png", "descriptors_pred_vs_true.png"]
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", report_markdown(report))
    return report


def _f(x: Any, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.2f} %" if pct else f"{x:.3f}"


def report_markdown(r: dict[str, Any]) -> str:
    """report.md: the letter's table beside ours, then P1-large and P2 in full."""
    p1, big, p2 = r["p1"], r["p1_large"], r["p2"]
    lines = [
        "# SeisBind evaluation", "",
        f"Queries: {r['queries']} test gathers; encoders: {r['encoders'].get('kind')} `{r['encoders'].get('path')}`; "
        f"training time: {_f(r.get('train_minutes'))} min.", "",
        "**The letter's test set differs from ours**: the letter (Liang & Matsushima, 2026) reports on its own "
        "OpenFWI split and gallery; our P1 gallery is the "
        f"{p1['gallery_size']} test models given here, with seismic data from this project's simulator. The "
        "numbers are comparable in protocol, not in data.", "",
        "## P1, paired gallery (the letter's protocol)", "",
        "| metric | letter | ours (P1) | ours (P1-large) |", "|---|---|---|---|",
    ]
    for task in ("seismic_to_velocity", "velocity_to_physics"):
        letter: dict[str, float] = LETTER[task]  # type: ignore[assignment]
        for key in (*(f"R@{k}" for k in KS), "mean_pos_sim", "mean_neg_sim"):
            lines.append(f"| {task.replace('_', ' ')} {key} | {_f(letter[key])} | {_f(p1[task][key])} | "
                         f"{_f(big[task][key])} |")
    lines.append(f"| descriptor error (k = {p2['k']}, mean rel.) | {_f(LETTER['descriptor_mre'], True)} | "
                 f"{_f(p2['descriptor_mre'], True)} (P2) | |")
    lines += ["", f"Gallery sizes: P1 {p1['gallery_size']}, P1-large {big['gallery_size']} (test + bank models).", "",
              "## P2, open bank (the test models are not in the bank)", "",
              f"Bank: {p2['bank_size']} velocity models. Descriptors are the mean over the {p2['k']} nearest bank "
              "entries of each query gather.", "",
              f"- headline descriptor error (mean relative, v_mean/v_min/v_max/v_top/v_bottom): "
              f"{_f(p2['descriptor_mre'], True)}",
              *([f"- blended with the bundle's descriptor readout (the service's default): "
                 f"{_f(p2['blend']['descriptor_mre'], True)} (the readout alone "
                 f"{_f(p2['blend']['readout_descriptor_mre'], True)})"] if "blend" in p2 else []),
              f"- top-1 retrieved model: MAE {p2['top1_mae_mps']:.1f} m/s, SSIM {p2['top1_ssim']:.3f}",
              *([f"- consensus pick among the {p2['k']}: MAE {p2['consensus']['mae_mps']:.1f} m/s (not the top-1 for "
                 f"{p2['consensus']['not_top1']:.0%} of the queries)"] if "consensus" in p2 else []), "",
              "| descriptor | unit | MAE |", "|---|---|---|"]
    for name in DESCRIPTOR_NAMES:
        lines.append(f"| {name} | {DESCRIPTOR_UNITS[name]} | {p2['descriptor_mae'][name]:.3g} |")
    if r.get("figures"):
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in r["figures"]]
    return "\n".join(lines) + "\n"


def default_banks(emb: Embedder) -> list[str]:
    """The training folders recorded with the encoders, if they still exist."""
    data = emb.info.get("data") or []
    recorded = [REPO / d["folder"] for d in data if isinstance(d, dict) and d.get("folder")]  # relative to the repo
    folders = [str(f) for f in recorded if f.is_dir()]
    if not folders:
        raise OpenFWIError("no --bank given and the encoders record no existing training folder; give --bank DIR")
    return folders


def main_evaluate(run_or_bundle: str, test: Sequence[str], bank: Sequence[str], out: str, k: int = 5) -> dict[str, Any]:
    """``seisbind evaluate``: load the encoders, pick the bank, run the protocols, return the report."""
    emb = load_embedder(run_or_bundle)
    banks = list(bank) or default_banks(emb)
    return evaluate(emb, test, banks, out, k=k)


def summary_line(report: dict[str, Any]) -> str:
    """One JSON line with the headline figures."""
    p1, p2 = report["p1"], report["p2"]
    return json.dumps({"p1_sv_R@1": p1["seismic_to_velocity"]["R@1"], "p1_sv_R@5": p1["seismic_to_velocity"]["R@5"],
                       "p1_vp_R@1": p1["velocity_to_physics"]["R@1"],
                       "p1_large_sv_R@1": report["p1_large"]["seismic_to_velocity"]["R@1"],
                       "p2_descriptor_mre": p2["descriptor_mre"], "p2_top1_mae_mps": p2["top1_mae_mps"],
                       **({"p2_blend_descriptor_mre": p2["blend"]["descriptor_mre"]} if "blend" in p2 else {})})
