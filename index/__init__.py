"""Velocity-bank index (DESIGN sections 4 and 10): ONNX Runtime embeddings, FAISS search, a versioned store with
atomic switches. No torch anywhere in this package: it is imported by the service.

Modules: ``encoders`` (ONNX Runtime sessions of an encoder bundle), ``ann`` (FAISS index construction, recall
tuning, per-call search parameters), ``gpu`` (FAISS GPU replicas behind a capability check), ``store`` (on-disk
versions and the CURRENT pointer), ``build`` (bank -> new verified version), ``searcher`` (load and search a
version), ``synthetic`` (clustered embedding banks for tests and benchmarks).
"""
