"""Benchmark scripts (docs/benchmarks.md), run from the repository root as ``python -m benchmarks.<name>``; each
writes ``benchmarks/results/<name>.json``, and ``--smoke`` runs it on tiny sizes to check that it works."""
