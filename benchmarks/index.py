"""Index benchmark (docs/benchmarks.md, ``benchmarks/results/index.json``): bank build throughput with velocity.onnx,
and per-query search latency of exact (IndexFlatIP) and IVF search beside a plain numpy brute force, for banks of
10k, 100k and 1M entries, all in one run on the same threads.

Search timings use synthetic clustered unit vectors of dimension 256 (a Gaussian mixture; see
index.synthetic), not embeddings of real models: no real bank is that large. Uniformly random vectors are measured
too, at 100k, to show why: they have no structure, and IVF cannot beat brute force on them at recall 0.95.

Run from the repository root:  python -m benchmarks.index [--encoders BUNDLE] [--threads 2]
Smoke run (tiny bundle, a synthetic bank of 64 models, 2,000 vectors; result in a temporary folder):
    python -m benchmarks.index --smoke
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks._common import add_output_args, default_openfwi_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", type=Path, default=None,
                   help="encoder bundle (default: the benchmark-size architecture, untrained, exported to a "
                        "temporary folder: same compute as a trained bundle)")
    p.add_argument("--bank", type=Path, default=None,
                   help="velocity models for the build throughput (default: the real FlatVel-A test models)")
    p.add_argument("--sizes", default="10000,100000,1000000", help="bank sizes for the search timings")
    p.add_argument("--queries", type=int, default=1000, help="queries per size (timed and used for recall)")
    p.add_argument("--batch", type=int, default=100, help="queries per search call")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads for the bank build")
    p.add_argument("--build-repeats", type=int, default=3, help="timed bank builds (median, min, max reported)")
    p.add_argument("--search-threads", type=int, default=1,
                   help="threads of FAISS (OpenMP) and numpy's BLAS for the search timings")
    p.add_argument("--stress", action="store_true",
                   help="also 1M vectors in groups of 100 with noise of norm 1.0, where neighbours barely stand out "
                        "from the background (a few more minutes)")
    p.add_argument("--no-write", action="store_true", help="print the figures without writing the result file")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.queries, args.batch, args.build_repeats, args.stress = "2000", 50, 25, 1, False
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.search_threads)

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from seisbind.provenance import portable_path  # noqa: E402

from benchmarks._common import write_result  # noqa: E402
from benchmarks._serving import DEFAULT_BUNDLE, TINY_BUNDLE, export_default_bundle, make_bank  # noqa: E402
from index.ann import RECALL_K, build_ann, configure_blas_threshold, neighbour_recall, perturbed_queries, search_params  # noqa: E402
from index.build import build_index  # noqa: E402
from index.searcher import Searcher  # noqa: E402
from index.synthetic import clustered_embeddings, random_unit_vectors  # noqa: E402

SMOKE_BANK_SIZE = 64
UNIFORM_SIZE = 100_000

DATA_NOTE = ("search timings on synthetic L2-normalised vectors of dim 256 (index.synthetic.clustered_embeddings): "
             "a Gaussian mixture of n/1000 random unit centres (1000 vectors per group, like variations within model "
             "families) with isotropic noise of norm 1.5 (cosine ~0.55 to the centre, ~0.3 within a group, ~0 "
             "across); queries are bank vectors plus noise of norm 0.75 (cosine ~0.8), renormalised. "
             "ms_per_query = wall time of searching batches of --batch "
             "queries divided by the number of queries: median over the batches of one pass over all queries (min/max "
             "beside it), the three methods taking turns on each batch; speedups are medians of the per-batch "
             "ratios; ivf_recall_at_10 is measured against exact search on the same queries.")


NOTES = ("Search timings use --search-threads (default 1) for FAISS and numpy alike: on this shared 2-core "
         "machine, where a priority job holds the cores, 2-thread OpenMP/BLAS searches stall on their barriers and "
         "run ~5x slower than 1 thread (measured). faiss 1.15 sends flat searches to BLAS only when nq*d >= 128000; "
         "index.ann.configure_blas_threshold lowers that to 800 per thread, which makes exact search of 100-query "
         "batches ~20x faster on one thread (measured: 12 -> 0.6 ms per query at 100k).")


def time_interleaved(searches: dict[str, Callable[[np.ndarray], np.ndarray]], xq: np.ndarray,
                     batch: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Search ``xq`` once with every method, batch by batch, the methods taking turns within each batch (in a
    rotating order), so that a shared machine's changing load hits them alike. Returns ms per query of every
    batch, and the results, per method."""
    names = list(searches)
    ms: dict[str, list[float]] = {name: [] for name in names}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for j, s in enumerate(range(0, len(xq), batch)):
        q = xq[s:s + batch]
        for name in names[j % len(names):] + names[:j % len(names)]:
            t0 = time.perf_counter()
            parts[name].append(searches[name](q))
            ms[name].append((time.perf_counter() - t0) * 1e3 / len(q))
    return ms, {name: np.concatenate(p) for name, p in parts.items()}


def numpy_topk(xb: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """Plain numpy brute force: scores = xq @ xb.T, argpartition, sort the top k."""
    def search(xq: np.ndarray) -> np.ndarray:
        scores = xq @ xb.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        return np.take_along_axis(part, order, axis=1)
    return search


def faiss_topk(index: faiss.Index, params: dict[str, Any], k: int) -> Callable[[np.ndarray], np.ndarray]:
    p = search_params(params, k)
    return lambda xq: index.search(xq, k, params=p)[1]


def measure_size(xb: np.ndarray, nq: int, args: argparse.Namespace) -> dict[str, Any]:
    """Exact, IVF and numpy search on one bank: ms per query, IVF recall@10 vs exact, speedups."""
    k = RECALL_K
    xq = perturbed_queries(xb, nq, seed=1234)  # other seed than the build-time tuning queries
    t0 = time.perf_counter()
    flat, flat_params = build_ann(xb, "flat")
    flat_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    ivf, ivf_params = build_ann(xb, "ivf", recall_target=0.95)
    ivf_build = time.perf_counter() - t0
    searches = {"numpy": numpy_topk(xb, k), "exact": faiss_topk(flat, flat_params, k),
                "ivf": faiss_topk(ivf, ivf_params, k)}
    for fn in searches.values():
        fn(xq[:10])  # warm-up
    ms, results = time_interleaved(searches, xq, args.batch)
    res: dict[str, Any] = {}
    for name, times in ms.items():
        res[f"{name}_ms_per_query"] = float(np.median(times))
        res[f"{name}_ms_per_query_min_max"] = [min(times), max(times)]
    res["ivf_recall_at_10"] = float(neighbour_recall(results["ivf"], results["exact"], k).mean())
    res["exact_equals_numpy_top10"] = float(neighbour_recall(results["numpy"], results["exact"], k).mean())
    res["ivf_speedup_vs_numpy"] = float(np.median(np.array(ms["numpy"]) / np.array(ms["ivf"])))
    res["exact_speedup_vs_numpy"] = float(np.median(np.array(ms["numpy"]) / np.array(ms["exact"])))
    top = np.einsum("qd,qkd->qk", xq, xb[results["exact"]])
    res["median_cosine"] = {"1st_neighbour": float(np.median(top[:, 0])),
                            "10th_neighbour": float(np.median(top[:, -1])),
                            "random_pair": float(np.median(np.sum(xq * xb[: len(xq)], axis=1)))}
    res["ivf"] = {key: ivf_params[key] for key in ("nlist", "nprobe", "train_points")}
    res["ivf"]["build_time_recall_at_10"] = ivf_params["tuning"]["recall_at_10"]
    res["ivf"]["tuning_queries"] = ivf_params["tuning"]["queries"]
    res["build_seconds"] = {"exact": round(flat_build, 2), "ivf": round(ivf_build, 2)}
    res["queries"] = len(xq)
    return res


def default_bank() -> Path:
    return default_openfwi_dir() / "flatvel_a" / "test_vmodel.zip"


def measure_build(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """End-to-end build_index throughput (read, validate, embed, descriptors, index, write, verify) and the
    embedding loop's own rate, with velocity.onnx on ``--threads`` threads."""
    bundle = args.encoders or export_default_bundle(work / "bundle", tiny=args.smoke)
    bank = args.bank or (make_bank(work / "bank", SMOKE_BANK_SIZE, seed=0) if args.smoke else default_bank())
    # Warm-up on a few models (session creation, first-run allocations), then the timed build.
    warm = work / "warm.npy"
    from seisbind.openfwi import read_models

    models = read_models(bank)
    np.save(warm, next(models.batches(64)))
    build_index(bundle, warm, work / "warm-index", intra_op_threads=args.threads, verify_sample=8)
    rates, embed_rates = [], []
    for _ in range(args.build_repeats):
        t0 = time.perf_counter()
        version = build_index(bundle, bank, work / "index", index_type="flat", intra_op_threads=args.threads)
        seconds = time.perf_counter() - t0
        s = Searcher.load(work / "index", version)
        rates.append(s.count / seconds)
        embed_rates.append(s.manifest.raw["build"]["models_per_second"])
    return {"build_models_per_second": float(np.median(rates)),
            "build": {"models": s.count, "models_per_second_min_max": [min(rates), max(rates)],
                      "runs": len(rates), "bank": portable_path(bank) if args.bank or not args.smoke else
                      f"synthetic, {SMOKE_BANK_SIZE} models",
                      "embed_models_per_second": float(np.median(embed_rates)),
                      "embed_models_per_second_min_max": [min(embed_rates), max(embed_rates)],
                      "what": "end-to-end build_index (read, validate, embed, descriptors, flat index, write, "
                              "verify) / embedding loop alone; median of runs",
                      "providers": s.manifest.raw["build"]["providers"], "bundle_id": s.bundle_id,
                      "bundle": portable_path(args.encoders) if args.encoders else
                      TINY_BUNDLE if args.smoke else DEFAULT_BUNDLE,
                      "intra_op_threads": args.threads}}


def main(args: argparse.Namespace) -> dict[str, Any]:
    faiss.omp_set_num_threads(args.search_threads)
    figures: dict[str, Any] = {"threads": args.threads, "search_threads": args.search_threads, "data": DATA_NOTE,
                               "k": RECALL_K, "batch": args.batch,
                               "faiss": {"version": faiss.__version__,
                                         "blas_threshold": configure_blas_threshold(args.search_threads)},
                               "notes": NOTES}
    with tempfile.TemporaryDirectory(prefix="seisbind-index-bench-") as tmp:
        figures.update(measure_build(args, Path(tmp)))
    print(json.dumps({k: figures[k] for k in ("build_models_per_second", "build")}, indent=1), flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        xb = clustered_embeddings(n, seed=0)
        figures[str(n)] = measure_size(xb, args.queries, args)
        del xb
        print(json.dumps({str(n): figures[str(n)]}, indent=1), flush=True)
    if args.stress:
        xb = clustered_embeddings(1_000_000, cluster_size=100, spread=1.0, seed=0)
        figures["small_groups_1000000"] = measure_size(xb, args.queries, args)
        figures["small_groups_note"] = ("1M vectors in groups of 100, noise of norm 1.0 (cosine ~0.5 within a group): "
                                        "a query's 10th neighbour is barely above the best of a million unrelated "
                                        "vectors (~0.33), so IVF needs many more lists for recall 0.95")
        del xb
        print(json.dumps({"small_groups_1000000": figures["small_groups_1000000"]}, indent=1), flush=True)
    n_uniform = min(UNIFORM_SIZE, max(int(s) for s in args.sizes.split(","))) if args.smoke else UNIFORM_SIZE
    xb = random_unit_vectors(n_uniform, seed=0)
    figures[f"uniform_random_{n_uniform}"] = measure_size(xb, min(args.queries, 300), args)
    figures["uniform_random_note"] = ("uniformly random unit vectors have no cluster structure: IVF reaches "
                                      "recall 0.95 only by probing most lists, so it is no faster than exact search")
    return figures


if __name__ == "__main__":
    assert ARGS is not None
    t_start = time.perf_counter()
    result = main(ARGS)
    result["benchmark_seconds"] = round(time.perf_counter() - t_start, 1)
    if not ARGS.no_write:
        print(write_result("index", result, ARGS.out, ARGS.smoke))
    else:
        print(json.dumps(result, indent=1))
