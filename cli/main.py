"""The ``seisbind`` command line (docs/cli.md). Heavy modules are imported inside each command, so that
``seisbind serve`` never pulls torch in."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional, cast

import typer

if TYPE_CHECKING:
    from pydantic import ValidationError

    from service.core.config import Settings

from cli.calibrate import calibrate, fit_readout  # torch-free
from cli.refine import refine_command  # torch-free at import
from cli.refiner_command import train_refiner
from cli.train_command import train
from cli.worker_command import refine_worker  # imports the queue only when run
from model.config import Device, RunError  # torch-free

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SeisBind: search seismic data by physics.")


def fail(message: str) -> NoReturn:
    """Print an error and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def invalid_settings(e: "ValidationError") -> NoReturn:
    """Exit naming every invalid service setting."""
    fail("invalid settings: " + "; ".join(f"{'.'.join(map(str, x['loc'])) or 'settings'}: {x['msg']}"
                                           for x in e.errors()))


def serve_until_stopped(settings: "Settings") -> None:
    """Run the HTTP service until it is stopped; a bad encoder bundle exits with its message."""
    from seisbind.bundle import BundleError

    from service.app import run

    try:
        run(settings)
    except BundleError as e:
        fail(str(e))


def parse_shard(shard: Optional[str]) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if shard is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        fail(f"--shard {shard!r}: expected i/n, e.g. 0/4")
    if not 0 <= i < n:
        fail(f"--shard {shard!r}: need 0 <= i < n")
    return i, n


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="output dataset folder (OpenFWI layout)"),
    family: Optional[str] = typer.Option(None, "--family",
                                         help="synthetic family, e.g. flatvel-a, curvefault-a, salt-a (docs/data.md)"),
    count: Optional[int] = typer.Option(None, "--count", help="number of synthetic models"),
    models: Optional[Path] = typer.Option(None, "--models",
                                          help="simulate given velocity models (.npy, OpenFWI folder or .zip)"),
    seed: int = typer.Option(0, "--seed"),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: do only the i-th of n shards of the chunks"),
    device: Device = typer.Option("cpu", "--device"),
    batch_size: int = typer.Option(8, "--batch-size", help="models simulated together"),
) -> None:
    """Generate synthetic velocity models and their shot gathers, or simulate gathers for given models."""
    from seisbind.openfwi import OpenFWIError

    from model.simulate import simulate_dataset

    if (models is None) == (family is None):
        fail("give either --family F --count N, or --models PATH")
    if family is not None and (count is None or count <= 0):
        fail("--family needs --count N with N > 0")
    i, n = parse_shard(shard)
    try:
        summary = simulate_dataset(out, family=family, count=count, models=models, seed=seed, shard=(i, n),
                                   device=device, batch_size=batch_size)
    except (OpenFWIError, ValueError) as e:
        fail(str(e))
    typer.echo(json.dumps(summary))


@app.command()
def descriptors(
    models: Path = typer.Option(..., "--models", help="velocity models (.npy, OpenFWI folder or .zip)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write .npy (n, 8) or .json instead of printing JSON"),
) -> None:
    """The physical descriptors (docs/data.md#descriptors) of velocity models."""
    import numpy as np

    from seisbind.descriptors import DESCRIPTOR_NAMES, as_dicts, compute_descriptors
    from seisbind.files import save_npy_atomic, write_text_atomic
    from seisbind.openfwi import OpenFWIError, read_models

    try:
        ms = read_models(models).validate()
        values = np.concatenate([compute_descriptors(b) for b in ms.batches(1000)]) if len(ms) else np.zeros((0, 8))
    except (OpenFWIError, ValueError) as e:
        fail(str(e))
    if out is not None and out.suffix == ".npy":
        save_npy_atomic(out, values)
        return
    doc = {"names": list(DESCRIPTOR_NAMES), "descriptors": as_dicts(values),
           "sources": [{"file": f, "row": r} for f, r in ms.sources()]}
    text = json.dumps(doc)
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        write_text_atomic(out, text)


@app.command("build-index")
def build_index(
    encoders: Path = typer.Option(..., "--encoders", help="encoder bundle folder (velocity.onnx embeds the bank)"),
    bank: Path = typer.Option(..., "--bank", help="velocity models: OpenFWI folder, .npy file or .zip of .npy"),
    out: Path = typer.Option(..., "--out", help="index root; the new version is made current when verified"),
    index_type: str = typer.Option("auto", "--type", help="auto (exact up to 1M entries, IVF beyond), flat, ivf, hnsw"),
    keep: int = typer.Option(5, "--keep", help="versions kept under the root (rollback = pointer change)"),
    recall_target: float = typer.Option(0.95, "--recall-target", help="recall@10 vs exact that IVF/HNSW must reach"),
) -> None:
    """Embed a bank of velocity models and write a new verified index version (docs/formats.md)."""
    from seisbind.bundle import BundleError
    from seisbind.openfwi import OpenFWIError
    from seisbind.progress import fraction_progress

    from index.build import build_index as run_build

    bar, report = fraction_progress("build-index")

    try:
        version = run_build(encoders, bank, out, index_type=index_type, recall_target=recall_target, keep=keep,
                            progress_cb=report)
    except (OpenFWIError, BundleError, ValueError) as e:
        fail(str(e))
    finally:
        bar.close()
    typer.echo(json.dumps({"version": version, "root": str(out), "current": version}))


@app.command()
def serve(
    encoders: Path = typer.Option(..., "--encoders", help="encoder bundle folder"),
    index: Path = typer.Option(..., "--index", help="index root (versions + CURRENT)"),
    host: Optional[str] = typer.Option(None, "--host", help="bind address (default SEISBIND_HOST or 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", help="port (default SEISBIND_PORT or 8000)"),
) -> None:
    """Serve the HTTP API (docs/api.md); other settings come from SEISBIND_* environment variables."""
    from pydantic import ValidationError

    from service.core.config import Settings

    overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    try:
        settings = Settings(encoders=encoders, index_root=index, **overrides)
    except ValidationError as e:
        invalid_settings(e)
    serve_until_stopped(settings)


@app.command()
def export(
    run: Path = typer.Option(..., "--run", help="training run folder"),
    out: Path = typer.Option(..., "--out", help="encoder bundle folder to write"),
    variant: Optional[list[str]] = typer.Option(
        None, "--variant", help="also write a cheaper seismic graph, checked against torch (repeat): 'fast' "
                                "(same computation, faster low-pass) or 'int8' (static int8, calibrated on "
                                "training gathers)"),
    default_variant: Optional[str] = typer.Option(
        None, "--default-variant", help="seismic graph the service runs by default: 'full' or an exported variant "
                                        "(default: the last --variant)"),
    calibration_gathers: int = typer.Option(256, "--calibration-gathers", min=1,
                                            help="training gathers the int8 variant is calibrated on"),
    readout: bool = typer.Option(True, "--readout/--no-readout", help="fit the descriptor readout on the run's "
                                                                      "training pairs (seisbind fit-readout)"),
) -> None:
    """Export a training run as an encoder bundle (ONNX + manifest), checked against torch."""
    from model.export import ParityError, export_run

    try:
        manifest = export_run(run, out, tuple(variant or ()), calibration_gathers, default_variant, readout)
    except (RunError, ParityError, FileExistsError, OSError, ValueError) as e:
        fail(str(e))
    typer.echo(json.dumps({"bundle": str(out), "bundle_id": manifest.bundle_id, "parity": manifest.parity,
                           "variants": {m: {n: v["parity_min_cosine"] for n, v in vs.items()}
                                        for m, vs in manifest.variants.items()},
                           "default_variants": manifest.default_variants,
                           "descriptor_readout": manifest.raw.get("descriptor_readout")}))


@app.command()
def evaluate(
    run: Path = typer.Option(..., "--run", help="training run folder or encoder bundle"),
    test: list[Path] = typer.Option(..., "--test", help="paired OpenFWI test folder (repeat for several)"),
    bank: Optional[list[Path]] = typer.Option(None, "--bank",
                                              help="bank of velocity models (default: the training folders)"),
    out: Path = typer.Option(..., "--out", help="report folder: report.json, report.md, figures"),
    k: int = typer.Option(5, "--k", help="neighbours averaged for descriptor inference (P2)"),
) -> None:
    """Evaluate encoders with protocols P1, P1-large and P2 (docs/evaluation.md)."""
    from seisbind.bundle import BundleError
    from seisbind.openfwi import OpenFWIError

    from model.evaluate import main_evaluate, summary_line

    if k < 1:
        fail(f"--k {k}: must be >= 1")
    try:
        report = main_evaluate(str(run), [str(t) for t in test], [str(b) for b in bank or []], str(out), k=k)
    except (OpenFWIError, BundleError, RunError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(summary_line(report))


@app.command()
def quickstart(
    workdir: Path = typer.Option(Path("runs/quickstart"), "--workdir", help="work folder; every step is cached there"),
    port: Optional[int] = typer.Option(None, "--port", help="port (default SEISBIND_PORT or 8000)"),
    host: Optional[str] = typer.Option(None, "--host", help="bind address (default SEISBIND_HOST or 127.0.0.1)"),
    no_serve: bool = typer.Option(False, "--no-serve", help="prepare everything, print how to call it, then exit"),
    preset: str = typer.Option("default", "--preset", help="default (about 10 min on 2 cores), small, or tiny (tests)"),
    train_minutes: Optional[float] = typer.Option(None, "--train-minutes",
                                                  help="training budget (default: the preset's)"),
    threads: Optional[int] = typer.Option(None, "--threads", envvar="SEISBIND_THREADS",
                                          help="CPU threads for simulation, training and evaluation (default: all)"),
) -> None:
    """From nothing to a serving instance: simulate, train, export, index, evaluate, serve (cached per step)."""
    from pydantic import ValidationError

    from seisbind.bundle import BundleError
    from seisbind.openfwi import OpenFWIError

    from cli import quickstart as qs
    from cli.pipeline import PipelineError
    from cli.quickstart_text import instructions

    try:
        cfg = qs.preset(preset, train_minutes)
        done = qs.prepare(workdir, cfg, threads=threads)
        settings = qs.serving_settings(done["layout"], host, port)
    except KeyboardInterrupt:
        typer.secho(f"interrupted: finished steps are kept in {workdir}; run the same command again to resume",
                    err=True)
        raise typer.Exit(130)
    except ValidationError as e:
        invalid_settings(e)
    except (PipelineError, OpenFWIError, BundleError, ValueError, OSError, RuntimeError) as e:
        fail(str(e))
    typer.echo(instructions(done["layout"], done["results"], settings.host, settings.port))
    if no_serve:
        again = f"seisbind quickstart --workdir {workdir}" + (f" --preset {preset}" if preset != "default" else "") \
            + (f" --train-minutes {train_minutes:g}" if train_minutes is not None else "")
        typer.echo(f"Serve it with: {again}   (or: seisbind serve --encoders {done['layout'].bundle} "
                   f"--index {done['layout'].indexes})")
        return
    serve_until_stopped(settings)


@app.command()
def ingest(
    file: Path = typer.Argument(..., help="shot-organised SEG-Y file, or a .npy [shot, time, receiver] of a stated "
                                "geometry"),
    out: Path = typer.Option(..., "--out", help="output .npy: gathers (5, 1000, 70) float32 in the OpenFWI geometry"),
    report: Optional[Path] = typer.Option(None, "--report", help="write the report (steps, warnings) as JSON here"),
    origin_m: Optional[float] = typer.Option(None, "--origin-m", help="line position of the model's x = 0 "
                                             "(default: the first source)"),
    amplitude: str = typer.Option("auto", "--amplitude", help="auto, keep, match, or a factor to multiply by"),
    dt_ms: Optional[float] = typer.Option(None, "--dt-ms", help=".npy: sample interval, ms"),
    sources_m: Optional[str] = typer.Option(None, "--sources-m", help=".npy: source positions, m, comma-separated"),
    receiver_spacing_m: Optional[float] = typer.Option(None, "--receiver-spacing-m", help=".npy: receiver spacing, m"),
    receiver_start_m: float = typer.Option(0.0, "--receiver-start-m", help=".npy: position of the first receiver, m"),
    offsets: bool = typer.Option(False, "--offsets", help=".npy: receivers move with each shot; --receiver-start-m "
                                 "is the first receiver's offset from the source"),
    delay_ms: float = typer.Option(0.0, "--delay-ms", help=".npy: time of the first sample after the shot, ms"),
) -> None:
    """SEG-Y (or a .npy of stated geometry) -> gathers in the OpenFWI geometry, with a report of every step."""
    import numpy as np

    from seisbind.files import save_npy_atomic, write_json_atomic
    from seisbind.ingest import AmplitudeMode, IngestError, ingest_array, ingest_segy

    try:
        amp = cast(AmplitudeMode, amplitude if amplitude in ("auto", "keep", "match") else float(amplitude))
    except ValueError:
        fail(f"--amplitude {amplitude!r}: expected auto, keep, match or a number")
    try:
        with open(file, "rb") as f:
            is_npy = f.read(6) == b"\x93NUMPY"
        if is_npy:
            if dt_ms is None or sources_m is None or receiver_spacing_m is None:
                fail(f"{file} is a .npy array: state its geometry with --dt-ms, --sources-m and --receiver-spacing-m "
                     "(and --receiver-start-m, --offsets, --delay-ms where needed)")
            data = np.load(file, allow_pickle=False)
            sx = [float(x) for x in sources_m.split(",")]
            rx = receiver_start_m + receiver_spacing_m * np.arange(data.shape[-1] if data.ndim == 3 else 0)
            where = {"receiver_offsets_m": rx} if offsets else {"receiver_x_m": rx}
            gathers, rep = ingest_array(data, dt_s=dt_ms / 1000, source_x_m=sx, delay_ms=delay_ms, origin_m=origin_m,
                                        amplitude=amp, **where)
        else:
            gathers, rep = ingest_segy(file, origin_m=origin_m, amplitude=amp)
    except (IngestError, OSError, ValueError) as e:
        fail(f"{file}: {e}")
    save_npy_atomic(out, gathers)
    if report is not None:
        write_json_atomic(report, rep)
    typer.echo(json.dumps({"out": str(out), "shape": list(gathers.shape),
                           "steps": [s["name"] for s in rep["steps"]], "warnings": rep["warnings"]}))


app.command("train")(train)
app.command("refine")(refine_command)
app.command("train-refiner")(train_refiner)
app.command("refine-worker")(refine_worker)
app.command("calibrate")(calibrate)
app.command("fit-readout")(fit_readout)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
