"""Chunked, resumable, shardable dataset simulation in the OpenFWI layout (``seisbind simulate``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from seisbind.openfwi import (
    CHUNK_SIZE, ModelSet, OpenFWIError, chunk_counts, chunk_is_complete, read_models, write_chunk,
)
from seisbind.progress import progress

from model.families import FAMILY_NAMES, generate

DATASET_FILE = "seisbind_dataset.json"


def chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    """The random stream of one chunk: depends only on (seed, chunk), so shards and resumed runs agree."""
    return np.random.default_rng([seed, chunk])


def _record_params(out: Path, params: dict[str, Any]) -> None:
    path = out / DATASET_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old is not None and old != params:
            raise ValueError(f"{out}: already holds a different dataset ({path.name}: {old}); choose another --out")
        if old == params:
            return
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(params, indent=1))
    os.replace(tmp, path)


def simulate_dataset(
    out: str | os.PathLike[str],
    family: str | None = None,
    count: int | None = None,
    models: str | os.PathLike[str] | None = None,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    device: str = "cpu",
    batch_size: int = 8,
    chunk_size: int = CHUNK_SIZE,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write velocity models and their shot gathers as ``data/dataN.npy`` + ``model/modelN.npy`` chunks.

    Either ``family`` + ``count`` (synthetic models, deterministic by ``seed``) or ``models`` (a .npy file,
    OpenFWI folder or .zip). Chunk N belongs to shard ``(N - 1) % n == i``. Finished chunks are kept and skipped,
    so an interrupted run resumes where it stopped; a chunk is written atomically, never half.

    Returns a summary: chunks written, chunks skipped, samples in this shard.
    """
    from model.simulator import simulate

    out = Path(out)
    i, n = shard
    source: ModelSet | None = None
    if models is not None:
        source = read_models(models).validate()
        if len(source) == 0:
            raise OpenFWIError(f"{models}: holds no velocity models")
        total = len(source)
        params: dict[str, Any] = {"models": str(Path(models).resolve()), "count": total, "chunk_size": chunk_size}
    else:
        if family not in FAMILY_NAMES:
            raise ValueError(f"--family {family!r}: unknown; choose one of {', '.join(FAMILY_NAMES)}")
        if count is None or count <= 0:
            raise ValueError(f"--count {count}: must be a positive number of models")
        total = count
        params = {"family": family, "count": count, "seed": seed, "chunk_size": chunk_size}
    out.mkdir(parents=True, exist_ok=True)
    _record_params(out, params)

    counts = chunk_counts(total, chunk_size)
    mine = [c for c in range(1, len(counts) + 1) if (c - 1) % n == i]
    todo = [c for c in mine if not chunk_is_complete(out, c, counts[c - 1])]
    all_models = source.array() if source is not None else None
    bar = progress(sum(counts[c - 1] for c in todo), f"simulate {out.name}", enabled=show_progress)
    with bar:
        for c in todo:
            start = (c - 1) * chunk_size
            if all_models is not None:
                v = all_models[start:start + counts[c - 1]]
            else:
                v = generate(family, counts[c - 1], chunk_rng(seed, c))
            data = np.empty((len(v), 5, 1000, 70), np.float32)
            for s in range(0, len(v), batch_size):
                data[s:s + batch_size] = simulate(v[s:s + batch_size], device=device, batch_size=batch_size)
                bar.update(len(v[s:s + batch_size]))
            write_chunk(out, c, data, v)
    return {"out": str(out), "chunks_written": len(todo), "chunks_skipped": len(mine) - len(todo),
            "samples_in_shard": sum(counts[c - 1] for c in mine), "total": total}
