"""SeisBind: search seismic data by physics.

This package holds the numpy-only pieces every side needs (acquisition constants, OpenFWI I/O,
physical descriptors) and the ``seisbind`` command line. It never imports torch.
"""

__version__ = "0.1.0"
