"""The files fitted into an encoder bundle after export (docs/cli.md, docs/formats.md), torch-free:
``seisbind calibrate`` fits the calibrated confidence and out-of-distribution flag on held-out data searched against
an index (``index.calibrate``, ``seisbind.calibration``); ``seisbind fit-readout`` fits the descriptor readout on
training pairs (``seisbind.readout_fit``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def calibrate(
    encoders: Path = typer.Option(..., "--encoders", help="encoder bundle folder to calibrate"),
    index: Path = typer.Option(..., "--index", help="index root whose current version is searched (the bank the "
                               "service will serve: confidence is about its top-1 model)"),
    data: list[Path] = typer.Option(..., "--data", help="held-out paired folder (OpenFWI layout) of the geology the "
                                    "encoders were trained on, not their training pairs; repeatable"),
    other_data: Optional[list[Path]] = typer.Option(None, "--other-data", help="held-out paired folder of other "
                                                    "geology: used for the confidence, not the OOD threshold; "
                                                    "repeatable"),
    out: Path = typer.Option(..., "--out", help="calibrated bundle folder (may be --encoders itself: replaced "
                             "atomically)"),
    noisy_copies: bool = typer.Option(True, "--noisy-copies/--no-noisy-copies", help="also fit on a noisy copy of "
                                      "every --data and --other-data gather (white noise at an SNR drawn from "
                                      "--noise-snr)"),
    noise_snr: tuple[float, float] = typer.Option((0.0, 30.0), "--noise-snr", help="SNR range of the noisy copies, "
                                                  "dB over the gather's mean power"),
) -> None:
    """Fit P(top-1 within 150 m/s MAE of the truth) and the out-of-distribution threshold on held-out gathers, and
    write the bundle with its calibration file; prints what it was fitted on."""
    from seisbind.bundle import BundleError
    from seisbind.calibration import CalibrationError
    from seisbind.openfwi import OpenFWIError

    from index.calibrate import NoisyCopies
    from index.calibrate import calibrate as run_calibrate
    from index.store import IndexStoreError

    try:
        noise = NoisyCopies(snr_db=noise_snr) if noisy_copies else None
        cal, sets = run_calibrate(encoders, index, data, other_data or [], out, noise)
    except (OpenFWIError, BundleError, CalibrationError, IndexStoreError, OSError, ValueError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
    fit = {k: cal.fit[k] for k in ("n", "n_in_distribution", "event_rate", "ece_on_fit", "index_version")}
    typer.echo(json.dumps({"out": str(out), **fit,
                           "sets": {s.name: {"n": len(s.mae), "in_distribution": s.in_distribution,
                                             "event_rate": float(s.outcome.mean())} for s in sets}}))


def fit_readout(
    encoders: Path = typer.Option(..., "--encoders", help="encoder bundle folder"),
    data: list[Path] = typer.Option(..., "--data", help="paired folder (OpenFWI layout) the encoders were trained "
                                                        "on; repeatable"),
    out: Path = typer.Option(..., "--out", help="bundle folder to write (may be --encoders itself: replaced "
                                                "atomically)"),
    max_pairs: int = typer.Option(20_000, "--max-pairs", min=64, help="pairs fitted on at most (evenly spread)"),
) -> None:
    """Fit the descriptor readout (descriptors straight from the seismic embedding, blended with the neighbours'
    by /infer-descriptors) on training pairs, and write the bundle with it; prints what it was fitted on."""
    from seisbind.bundle import BundleError
    from seisbind.openfwi import OpenFWIError
    from seisbind.readout import ReadoutError
    from seisbind.readout_fit import fit_bundle_readout

    try:
        readout = fit_bundle_readout(encoders, data, out, max_pairs)
    except (OpenFWIError, BundleError, ReadoutError, OSError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from e
    typer.echo(json.dumps({"out": str(out), "pairs": readout.fit["pairs"], "penalty": readout.penalty,
                           "loo_mse_standardised": readout.fit["loo_mse_standardised"]}))
