"""Velocity-bank index (docs/formats.md, docs/architecture.md#scale): embeddings by the encoder bundle, FAISS search,
a versioned store with atomic switches. No torch anywhere in this package: it is imported by the service.

Modules: ``ann`` (FAISS index construction, recall
tuning, per-call search parameters), ``gpu`` (FAISS GPU replicas behind a capability check), ``store`` (on-disk
versions and the CURRENT pointer), ``build`` (bank -> new verified version), ``searcher`` (load and search a
version), ``synthetic`` (clustered embedding banks for tests and benchmarks).
"""
