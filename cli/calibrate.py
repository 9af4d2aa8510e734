"""``seisbind calibrate``: fit the calibrated confidence and out-of-distribution flag of an encoder bundle on
held-out data searched against an index, and write the bundle with it (docs/cli.md, docs/formats.md). Torch-free:
the fit is ``index.calibrate``'s, the model ``seisbind.calibration``'s."""

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
