"""``readout_noise.json``: the descriptor readout fitted on clean training gathers only against the one
``seisbind.readout_fit`` fits (each training gather also with white noise at an SNR drawn from 0-30 dB), side by side
on one bundle: descriptor error of the readout alone and of the blend ``/infer-descriptors`` returns by default, on
the ``openfwi-vel`` test gathers clean and with white noise at each ``--snr-db`` level (docs/benchmarks.md).

    python -m benchmarks.readout_noise --bundle BUNDLE      # about 7 minutes on 2 cores for 10,000 pairs
    python -m benchmarks.readout_noise --smoke               # tiny untrained bundle, seconds
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.provenance import portable_path

from benchmarks._common import REPO, add_output_args, write_result

CACHE = REPO / ".cache" / "openfwi_vel"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="encoder bundle (its full-precision seismic graph is used)")
    p.add_argument("--train", type=Path, action="append", default=None,
                   help="paired training folder: the readouts' pairs and the bank (repeat; default FlatVel-A and "
                        "CurveVel-A train under .cache/openfwi_vel)")
    p.add_argument("--test", type=Path, action="append", default=None, help="paired test folder (repeat)")
    p.add_argument("--snr-db", type=float, nargs="+", default=[10.0, 0.0], help="noise levels of the test gathers")
    p.add_argument("--k", type=int, default=5, help="neighbours averaged")
    add_output_args(p)
    a = p.parse_args(argv)
    if a.smoke:
        smoke_setup(a)
    if a.bundle is None:
        p.error("--bundle is required (or --smoke)")
    a.train = a.train or [CACHE / "flatvel_a" / "train", CACHE / "curvevel_a" / "train"]
    a.test = a.test or [CACHE / "flatvel_a" / "test", CACHE / "curvevel_a" / "test"]
    return a


def smoke_setup(a: argparse.Namespace) -> None:
    """--smoke: a tiny untrained bundle and tiny simulated FlatVel-like folders."""
    from benchmarks._ood_data import simulate_family
    from model.export import export_untrained_bundle

    work = Path(tempfile.mkdtemp(prefix="seisbind-readout-noise-smoke-"))
    export_untrained_bundle(work / "bundle")
    a.bundle = work / "bundle"
    a.train = [simulate_family(work / "train", "flatvel-a", 72, 1)]
    a.test = [simulate_family(work / "test", "flatvel-a", 16, 2)]


def main(a: argparse.Namespace) -> dict[str, Any]:
    from seisbind.bundle import EncoderBundle
    from seisbind.descriptors import compute_descriptors, mean_relative_error
    from seisbind.neighbours import exact_top_k, infer_descriptors
    from seisbind.noise import add_white_noise
    from seisbind.openfwi import open_dataset
    from seisbind.readout import blend, fit_readout
    from seisbind.readout_fit import NOISE_SNR_DB, embed_training_pairs

    from model.evaluate import embed_arrays

    bundle = EncoderBundle(a.bundle, variants={"seismic": "full"})
    emb, desc = embed_training_pairs(bundle, a.train, show_progress=not a.smoke)
    pairs = len(emb) // 2  # the clean rows, then their noisy copies
    readouts = {"clean_fit": fit_readout(emb[:pairs], desc[:pairs]), "noisy_fit": fit_readout(emb, desc)}
    bank_models = np.concatenate([np.asarray(m) for f in a.train for m in open_dataset(f).models])
    bank_desc = compute_descriptors(bank_models)
    VB = embed_arrays(bundle.velocity.encode, [bank_models], 256, "embed bank models")
    tests = [open_dataset(f, check_values=True) for f in a.test]
    gathers = [g for d in tests for g in d.data]
    true = compute_descriptors(np.concatenate([np.asarray(m) for d in tests for m in d.models]))
    rng = np.random.default_rng(7)
    levels: dict[str, Any] = {}
    for snr in [None, *a.snr_db]:
        def noisy(x: np.ndarray, snr: float | None = snr) -> np.ndarray:
            return x if snr is None else add_white_noise(x, np.full(len(x), snr), rng)

        S = embed_arrays(lambda x: bundle.seismic.encode(noisy(x)), gathers, 64, f"embed test gathers ({snr} dB)")
        D, I = exact_top_k(S, VB, a.k)  # noqa: E741 - faiss naming
        neighbours, _ = infer_descriptors(bank_desc, D, I, "mean")
        row: dict[str, Any] = {"neighbours_descriptor_mre": mean_relative_error(neighbours, true)}
        for name, ro in readouts.items():
            r = ro.predict(S)
            row[name] = {"readout_descriptor_mre": mean_relative_error(r, true),
                         "blend_descriptor_mre": mean_relative_error(blend(neighbours, r), true)}
        levels["clean" if snr is None else f"{snr:g}"] = row
    return {"levels": levels, "bundle": portable_path(a.bundle), "bundle_id": bundle.bundle_id,
            "train": [portable_path(f) for f in a.train], "test": [portable_path(f) for f in a.test],
            "train_pairs": pairs, "queries": int(len(true)), "bank_size": int(len(VB)), "k": a.k,
            "noisy_fit_snr_db": list(NOISE_SNR_DB),
            "penalties": {name: ro.penalty for name, ro in readouts.items()},
            "notes": "levels: test gathers clean and with white noise at each SNR (dB); clean_fit: the readout "
                     "fitted on the clean training gathers only; noisy_fit: also on a noisy copy of each (what "
                     "seisbind.readout_fit fits); blend = mean of the neighbours' estimate and the readout"}


if __name__ == "__main__":
    ARGS = parse_args()
    print(write_result("readout_noise", main(ARGS), ARGS.out, ARGS.smoke))
