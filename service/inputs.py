"""Request payloads -> validated numpy arrays. Pure numpy: every problem is an :class:`InputError` naming it.

Shot gathers arrive either as raw ``.npy`` bytes or as JSON nested lists, one gather (5, 1000, 70) or a batch
(B, 5, 1000, 70). float32 is used as is, float64 is cast; any other dtype, a wrong shape, or NaN/Inf is refused.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seisbind.acquisition import GATHER_SHAPE
from seisbind.ingest import SEGY_MEDIA_TYPE, IngestError, ingest_segy
from seisbind.readout import METHODS, Method

NPY_MEDIA_TYPE = "application/x-npy"
NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 10_000
"""Largest .npy header parsed (numpy's own default guard against oversized headers)."""


class InputError(ValueError):
    """A request payload that cannot be used; the message says what is wrong (HTTP 422)."""


def parse_npy(body: bytes) -> np.ndarray:
    """Parse ``.npy`` bytes without pickle, checking the header (dtype, shape, data length) before any data is
    read, so a header that claims a huge array cannot make the service allocate it. Returns a read-only view of
    ``body``."""
    if not body.startswith(NPY_MAGIC):
        raise InputError("body is not a .npy file (it does not start with the \\x93NUMPY magic); "
                         "send the bytes numpy.save writes, or JSON")
    buf = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf, max_header_size=MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf, max_header_size=MAX_NPY_HEADER)
        else:
            raise InputError(f".npy format version {version[0]}.{version[1]} is not supported (use 1.0 or 2.0)")
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's header parser raises many types (ValueError, TokenError, ...)
        raise InputError(f"body is not a readable .npy file: {_header_problem(body, e)}") from e
    if not all(type(n) is int and n >= 0 for n in shape):  # numpy lets bools and negative sizes through
        raise InputError(f".npy header declares an invalid shape {show_shape(tuple(shape))}")
    check_dtype(dtype)
    check_shape(tuple(shape))
    want = math.prod(shape) * dtype.itemsize
    have = len(body) - buf.tell()
    if have != want:
        raise InputError(f".npy data is {have} bytes but its header declares shape {show_shape(tuple(shape))} {dtype} "
                         f"= {want} "
                         "bytes (truncated or padded body)")
    # A view of the body, no copy: check_gathers copies only when it must cast (float64, byte order, Fortran).
    arr = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=buf.tell())
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return arr


def parse_segy(body: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """A shot-organised SEG-Y file's bytes -> (one gather (5, 1000, 70) float32, the ingest report); a file that
    cannot be read or mapped is an InputError saying what is wrong or missing (docs/ingest.md)."""
    try:
        return ingest_segy(body)
    except IngestError as e:
        raise InputError(f"SEG-Y ({SEGY_MEDIA_TYPE}) body: {e}") from e
    except Exception as e:  # noqa: BLE001 - whatever a client's file does to the reader, it is the file's fault
        raise InputError(f"SEG-Y ({SEGY_MEDIA_TYPE}) body could not be ingested: {type(e).__name__}: {e}") from e


def _header_problem(body: bytes, exc: Exception) -> str:
    """What is wrong with a .npy header that numpy could not read, in our words: numpy's message can quote the
    header (kilobytes of it, or the repr of a parsed expression), which is never echoed back."""
    if len(body) < 10:
        return "cut short within the magic string and header length"
    size = int.from_bytes(body[8:10] if body[6:7] == b"\x01" else body[8:12], "little")
    start = 10 if body[6:7] == b"\x01" else 12
    if size > MAX_NPY_HEADER:
        return f"its header declares {size} bytes, more than {MAX_NPY_HEADER}"
    if len(body) < start + size:
        return "cut short within the header"
    return ("its header is not the dictionary numpy.save writes, e.g. {'descr': '<f4', 'fortran_order': False, "
            "'shape': (5, 1000, 70)}")


def check_dtype(dtype: np.dtype) -> None:
    """float32 or float64 only (either byte order)."""
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise InputError(f"gathers have dtype {dtype}; send float32 (native) or float64 (cast to float32)")


def check_shape(shape: tuple[int, ...]) -> None:
    """(5, 1000, 70) or (B, 5, 1000, 70) with B >= 1."""
    if shape == GATHER_SHAPE:
        return
    if len(shape) == 4 and tuple(shape[1:]) == GATHER_SHAPE:
        if shape[0] < 1:
            raise InputError(f"gathers: empty batch (shape {tuple(shape)}); send at least one gather")
        return
    raise InputError(f"gathers have shape {show_shape(shape)}; expected (5, 1000, 70) or (B, 5, 1000, 70)")


def show_shape(shape: tuple[Any, ...]) -> str:
    """A shape for a message: in full up to 6 dimensions, else its rank and first dimensions (never kilobytes)."""
    if len(shape) <= 6:
        return str(tuple(shape))
    return f"({', '.join(map(str, shape[:4]))}, ... {len(shape)} dimensions)"


def check_gathers(arr: np.ndarray, max_gathers: int) -> np.ndarray:
    """Validate gathers and return them as C-contiguous native float32 [B, 5, 1000, 70].

    Raises InputError for another dtype, a wrong shape, more than ``max_gathers`` gathers, or NaN/Inf values.
    """
    check_dtype(arr.dtype)
    check_shape(tuple(arr.shape))
    if arr.ndim == 3:
        arr = arr[None]
    if len(arr) > max_gathers:
        raise InputError(f"{len(arr)} gathers in one request; at most {max_gathers} are accepted (split the batch)")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, refused just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out).reshape(len(out), -1).all(1)
    if not finite.all():
        i = int(np.argmin(finite))
        extra = " (or values beyond float32's range)" if arr.dtype.itemsize == 8 else ""
        raise InputError(f"gather {i} holds NaN or Inf values{extra}")
    return out


def check_k(k: int, max_k: int, count: int | None = None) -> int:
    """1 <= k <= max_k, and k <= the number of index entries when known."""
    top = max_k if count is None else min(max_k, count)
    if not 1 <= k <= top:
        held = "" if count is None else f"; the index holds {count} entries"
        raise InputError(f"k={k} is out of range: need 1 <= k <= {top} (service limit {max_k}{held})")
    return k


def check_method(method: str | None, readout_names: Sequence[str] | None, index_names: Sequence[str]) -> Method:
    """The descriptor estimate to use: ``blend`` (the default) when the encoder bundle has a readout
    (``readout_names``, None without one) of the index's descriptors, else ``neighbours``; an explicit ``blend``
    that cannot be served is an InputError saying why."""
    usable = readout_names is not None and list(readout_names) == list(index_names)
    if method is None:
        return "blend" if usable else "neighbours"
    if method == "blend" and not usable:
        why = ("the encoder bundle has no descriptor readout (seisbind fit-readout adds one)" if readout_names is None
               else f"the bundle's readout gives {list(readout_names)}, the index holds {list(index_names)}")
        raise InputError(f"method=blend: {why}; use method=neighbours")
    if method not in METHODS:
        raise InputError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    return method  # type: ignore[return-value]


def check_descriptors(values: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    """A descriptor vector given by name -> float32 [1, D] in ``names`` order; every name required, no others."""
    missing = [n for n in names if n not in values]
    unknown = [n for n in values if n not in names]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown {', '.join(unknown)}")
        raise InputError(f"descriptors: {'; '.join(parts)} (expected exactly: {', '.join(names)})")
    row = np.array([float(values[n]) for n in names], dtype=np.float64)
    bad = [f"{n} = {x:g}" for n, x in zip(names, row) if not math.isfinite(x) or abs(x) > np.finfo(np.float32).max]
    if bad:
        raise InputError(f"descriptors: {', '.join(bad)}: each must be a finite number within float32's range "
                         "(+-3.4e38)")
    return row.astype(np.float32)[None]
