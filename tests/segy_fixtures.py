"""Shared pieces of the ingest tests: the OpenFWI line geometry and broken variants of a valid SEG-Y file. Not a
test module (no ``test_`` prefix)."""

from __future__ import annotations

import struct

import numpy as np

SOURCES = [0.0, 170.0, 340.0, 520.0, 690.0]
RX10 = np.arange(70) * 10.0
SEGY = {"Content-Type": "application/x-segy"}


def patched(body: bytes, offset: int, value: int, fmt: str = ">H") -> bytes:
    """``body`` with the big-endian value written at ``offset``."""
    b = bytearray(body)
    b[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(b)


def bad_files(body: bytes) -> dict[str, tuple[bytes, str]]:
    """Broken variants of a valid big-endian IEEE SEG-Y file of 1000-sample traces, and the message fragment each
    must be refused with."""
    trace = 240 + 4 * 1000
    return {
        "truncated": (body[:-1000], "truncated"),
        "zero traces": (body[:3600], "no traces"),
        "headers only part": (body[:2000], "shorter than the 3600-byte"),
        "inconsistent sample counts": (patched(body, 3600 + 5 * trace + 114, 900), "inconsistent sample counts"),
        "text renamed .sgy": (b"just some text, not seismic\n" * 200, "not a SEG-Y file"),
        "more samples than the file holds": (patched(body, 3220, 60000), "claims 60000 samples per trace"),
        "no sample interval": (patched(patched(body, 3216, 0), 3600 + 116, 0), "no sample interval"),
    }
