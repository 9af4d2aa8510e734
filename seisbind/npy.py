"""The ``.npy`` bytes of an array: the body of an ``application/x-npy`` request (docs/api.md), made in one place
for the client, the tests and the benchmarks."""

from __future__ import annotations

import io

import numpy as np


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` serialised as a ``.npy`` file in memory (``numpy.save``; never pickles, so object arrays are
    refused with numpy's ValueError)."""
    buf = io.BytesIO()
    np.save(buf, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()
