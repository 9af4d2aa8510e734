"""The ``seisbind`` command line (DESIGN section 5). Heavy modules are imported inside each command, so that
``seisbind serve`` never pulls torch in."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SeisBind: search seismic data by physics.")


def fail(message: str) -> None:
    """Print an error and exit non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def parse_shard(shard: Optional[str]) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    import os

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
    family: Optional[str] = typer.Option(None, "--family", help="synthetic family: flatvel-a, curvevel-a, flatfault-a, curvefault-a"),
    count: Optional[int] = typer.Option(None, "--count", help="number of synthetic models"),
    models: Optional[Path] = typer.Option(None, "--models", help="simulate given velocity models (.npy, OpenFWI folder or .zip)"),
    seed: int = typer.Option(0, "--seed"),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: do only the i-th of n shards of the chunks"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
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
    """The physical descriptors (DESIGN section 3) of velocity models."""
    import numpy as np

    from seisbind.descriptors import DESCRIPTOR_NAMES, as_dicts, compute_descriptors
    from seisbind.openfwi import OpenFWIError, read_models, save_npy_atomic

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
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(text)
        tmp.replace(out)


@app.command("build-index")
def build_index(
    encoders: Path = typer.Option(..., "--encoders", help="encoder bundle folder (velocity.onnx embeds the bank)"),
    bank: Path = typer.Option(..., "--bank", help="velocity models: OpenFWI folder, .npy file or .zip of .npy"),
    out: Path = typer.Option(..., "--out", help="index root; the new version is made current when verified"),
    index_type: str = typer.Option("auto", "--type", help="auto (exact up to 1M entries, IVF beyond), flat, ivf, hnsw"),
    keep: int = typer.Option(5, "--keep", help="versions kept under the root (rollback = pointer change)"),
    recall_target: float = typer.Option(0.95, "--recall-target", help="recall@10 vs exact that IVF/HNSW must reach"),
) -> None:
    """Embed a bank of velocity models and write a new verified index version (DESIGN section 4)."""
    from seisbind.bundle import BundleError
    from seisbind.openfwi import OpenFWIError
    from seisbind.progress import progress

    from index.build import build_index as run_build

    bar = progress(1000, "build-index")
    done = [0]

    def report(fraction: float) -> None:
        step = int(fraction * 1000) - done[0]
        if step > 0:
            bar.update(step)
            done[0] += step

    try:
        version = run_build(encoders, bank, out, index_type=index_type, recall_target=recall_target, keep=keep,
                            progress_cb=report)
    except (OpenFWIError, BundleError, ValueError) as e:
        fail(str(e))
    finally:
        bar.close()
    typer.echo(json.dumps({"version": version, "root": str(out), "current": version}))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
