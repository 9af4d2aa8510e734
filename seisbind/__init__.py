"""SeisBind: search seismic data by physics.

This is the ground package: the pieces every side needs (acquisition constants, OpenFWI I/O, physical descriptors,
atomic file writes, the encoder bundle and its ONNX Runtime sessions, exact neighbours, retrieval metrics). It
imports nothing above it and never imports torch (docs/architecture.md).
"""

__version__ = "0.1.0"
