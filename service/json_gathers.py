"""JSON gathers requests parsed in bounded memory.

``json.loads`` of a whole body makes a Python object of every value: a 34 MB body of empty lists becomes 1.2 GB of
lists, a 64 MB flat list of ``0.0`` almost 1 GB of floats. Here the body is first checked with byte counts (C
speed, no allocation) against what a request of at most ``max_gathers`` gathers can hold; the ``"gathers"`` array
is then located by its brackets and parsed one gather at a time (the standard JSON parser, so the JSON rules and
numbers are exactly Python's), each gather written into the float32 result as soon as it is read. Besides the body,
memory stays within one gather's Python objects and the result. The other fields (``k`` ...) are parsed from what
remains of the body once the array is cut out, which must be small.

Pure numpy and stdlib; every problem is an :class:`~service.inputs.InputError` naming it.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np

from seisbind.acquisition import GATHER_SHAPE

from service.inputs import InputError

GATHER_VALUES = math.prod(GATHER_SHAPE)
"""Numbers in one gather (350,000)."""
GATHER_LISTS = 1 + GATHER_SHAPE[0] + GATHER_SHAPE[0] * GATHER_SHAPE[1]
"""JSON arrays in one gather: itself, its shots and their time samples (5,006)."""
SMALL_JSON_BYTES = 64 * 1024
"""Largest JSON parsed whole: the fields besides the gathers array, or a body without such an array."""
_SLACK = 64
"""Brackets and commas allowed beyond those of the gathers (other fields, a wrapping list that is refused later)."""
_GATHERS_KEY = re.compile(rb'"gathers"\s*:\s*\[')
_NOT_NUMERIC = re.compile(rb"[^0-9eE.+\-,\s\[\]NaInfity]")
"""A byte that cannot be part of an array of JSON numbers (NaN and Infinity are refused later, by gather)."""
_SEPARATOR = re.compile(rb"\s*,\s*")
_WHITESPACE = re.compile(rb"\s*")
_PLACEHOLDER = "gathers-" + secrets.token_hex(16)
"""Stands in for the gathers array when the rest of the body is parsed (unguessable: a body cannot forge it)."""
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def parse_gathers_json(body: bytes, max_gathers: int,
                       check_fields: Callable[[dict[str, Any]], Any] | None = None,
                       ) -> tuple[dict[str, Any], np.ndarray]:
    """Parse a JSON gathers request: (the object's other fields, gathers [B, 5, 1000, 70] float32).

    The gathers are checked for shape, count (at most ``max_gathers``) and finite float32 values; the other
    fields are returned as parsed and, when given, passed to ``check_fields`` before the gathers are read (so a
    bad field is reported first). Raises InputError naming the problem.
    """
    _check_counts(body, max_gathers)
    starts = [m.end() - 1 for m in _GATHERS_KEY.finditer(body)]
    if not starts:
        return _without_gathers_array(body)
    if len(starts) > 1:
        raise InputError('JSON body: "gathers" appears more than once; send one "gathers" array')
    start = starts[0]
    opens, closes = _bracket_positions(body)
    end, depth = _array_end(opens, closes, start)
    if end < 0:
        raise InputError(f'body is not valid JSON: the "gathers" array opened at character {start} is never closed')
    bad = _NOT_NUMERIC.search(body, start, end + 1)
    if bad is not None:
        raise InputError(_not_a_number(body, bad.start()))
    rest = body[:start] + json.dumps(_PLACEHOLDER).encode() + body[end + 1:]
    if len(rest) > SMALL_JSON_BYTES:
        raise InputError(f"JSON body: the fields besides \"gathers\" take {len(rest)} bytes, more than "
                         f"{SMALL_JSON_BYTES}; only k and the documented options may accompany the gathers")
    try:
        doc = _loads(rest, 0)
    except InputError as e:  # positions after the array: counted in the body, not in ``rest``
        m = re.search(r"\(at character (\d+)\)$", str(e))
        if m is None or int(m.group(1)) <= start:
            raise
        raise InputError(str(e)[:m.start()] + f"(at character {int(m.group(1)) + len(body) - len(rest)})") from e
    if not isinstance(doc, dict) or doc.get("gathers") != _PLACEHOLDER:
        raise InputError('JSON body must be an object with "gathers" (and optionally "k", ...)')
    if check_fields is not None:
        check_fields(doc)
    if depth > 4:
        raise InputError(f"'gathers' nests arrays {depth} deep; expected 3 (one gather: [shot][time sample][receiver]) "
                         "or 4 (a batch of them)")
    spans = _gather_spans(body, opens, closes, start, end, depth)
    if len(spans) > max_gathers:
        raise InputError(f"{len(spans)} gathers in one request; at most {max_gathers} are accepted (split the batch)")
    out = np.empty((len(spans), *GATHER_SHAPE), np.float32)
    for i, (a, b) in enumerate(spans):
        out[i] = _read_gather(body, a, b, i, single=depth <= 3)
    return doc, out


def _check_counts(body: bytes, max_gathers: int) -> None:
    """Refuse, before any parsing, a body with more arrays or values than ``max_gathers`` gathers have."""
    lists = max_gathers * GATHER_LISTS + _SLACK
    for char, name in ((b"[", "opening"), (b"]", "closing")):
        n = body.count(char)
        if n > lists:
            deep = re.sub(rb"\s+", b"", body[:4096]).find(b"[" * 6) >= 0
            raise InputError("body is not valid JSON: nested too deeply" if deep else
                             f"JSON body holds {n} {name} brackets; a request of at most {max_gathers} gathers "
                             f"(SEISBIND_MAX_GATHERS) has at most {lists} arrays")
    values = max_gathers * (GATHER_VALUES + GATHER_LISTS) + _SLACK
    n = body.count(b",")
    if n > values:
        raise InputError(f"JSON body holds {n} commas; a request of at most {max_gathers} gathers "
                         f"(SEISBIND_MAX_GATHERS) has at most {values} values")


def _loads(text: bytes, offset: int, numbers_only: bool = False) -> Any:
    """json.loads with the error message of the service (the position counted in the whole body); with
    ``numbers_only`` integers are read as floats (10**30 is then a float beyond float32, not an object)."""
    try:
        return json.loads(text, parse_int=float) if numbers_only else json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"body is not valid JSON: {e.msg} (at character {offset + e.pos})") from e
    except UnicodeDecodeError as e:
        raise InputError(f"body is not valid JSON: not UTF-8 text ({e.reason} at byte {offset + e.start})") from e
    except RecursionError as e:
        raise InputError("body is not valid JSON: nested too deeply") from e


def _without_gathers_array(body: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """A body with no ``"gathers": [`` in it: parsed whole when small, for the precise message of what is wrong."""
    if len(body) > SMALL_JSON_BYTES:
        raise InputError('JSON body must be an object with "gathers": nested lists of numbers (no "gathers" array '
                         f"found in {len(body)} bytes of UTF-8 JSON)")
    doc = _loads(body, 0)
    if not isinstance(doc, dict) or "gathers" not in doc:
        raise InputError('JSON body must be an object with "gathers" (and optionally "k", ...)')
    value = doc["gathers"]
    kind = "null" if value is None else type(value).__name__
    raise InputError(f"'gathers' must be nested lists of numbers, got {kind}")


def _bracket_positions(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Positions of every ``[`` and ``]`` in the body (their counts were bounded by _check_counts)."""
    u8 = np.frombuffer(body, np.uint8)
    return np.flatnonzero(u8 == ord("[")), np.flatnonzero(u8 == ord("]"))


def _array_end(opens: np.ndarray, closes: np.ndarray, start: int) -> tuple[int, int]:
    """(position of the ``]`` closing the array opened at ``start`` or -1, deepest nesting inside it, 1 = flat)."""
    pos = np.concatenate([opens[opens >= start], closes[closes > start]])
    step = np.concatenate([np.ones(np.count_nonzero(opens >= start), np.int64),
                           -np.ones(np.count_nonzero(closes > start), np.int64)])
    order = np.argsort(pos, kind="stable")
    depth = np.cumsum(step[order])
    shut = np.flatnonzero(depth == 0)
    if not len(shut):
        return -1, 0
    first = int(shut[0])
    return int(pos[order][first]), int(depth[:first + 1].max())


def _not_a_number(body: bytes, at: int) -> str:
    """The message for the first byte of the gathers array that no number has."""
    while at > 0 and body[at - 1:at].isalpha():  # "true": "t" may start a number's "Infinity", "r" may not
        at -= 1
    word = re.match(rb'"[^"]{0,20}"?|[A-Za-z_]{1,12}|.', body[at:at + 24], re.S)
    shown = word.group(0).decode("utf-8", "replace") if word else "?"
    what = {"true": "a boolean", "false": "a boolean", "null": "a null"}.get(shown, "")
    what = what or ("a string" if shown.startswith('"') else "an object" if shown == "{" else "")
    return (f"'gathers' must hold only numbers: found {shown}{f' ({what})' if what else ''} at character {at}; "
            "booleans, nulls, strings and objects are refused")


def _gather_spans(body: bytes, opens: np.ndarray, closes: np.ndarray, start: int, end: int,
                  depth: int) -> list[tuple[int, int]]:
    """(first, last) byte of each gather: the whole array when it nests 3 deep or less (one gather, or a shape
    error found when it is read), else each array directly inside it, which must be separated by commas only."""
    if depth <= 3:
        return [(start, end)]
    inner_o = opens[(opens > start) & (opens < end)]
    inner_c = closes[(closes > start) & (closes < end)]
    pos = np.concatenate([inner_o, inner_c])
    step = np.concatenate([np.ones(len(inner_o), np.int64), -np.ones(len(inner_c), np.int64)])
    order = np.argsort(pos, kind="stable")
    pos, level = pos[order], np.cumsum(step[order])
    # an array directly inside opens at level 1 (after its "[") and closes when the level returns to 0
    first = pos[(level == 1) & (step[order] == 1)]
    last = pos[level == 0]
    if len(first) != len(last) or (level < 0).any():
        raise InputError(f"'gathers' is not a regular nested list (unbalanced brackets between characters {start} "
                         f"and {end})")
    spans = list(zip(first.tolist(), last.tolist()))
    gaps = [(start + 1, spans[0][0])] + [(b + 1, a) for (_, b), (a, _) in zip(spans, spans[1:])] + \
           [(spans[-1][1] + 1, end)]
    for i, (a, b) in enumerate(gaps):
        sep = _WHITESPACE if i in (0, len(gaps) - 1) else _SEPARATOR
        if sep.fullmatch(body, a, b) is None:
            raise InputError(f"'gathers' is not a regular nested list (ragged?): a batch must hold only gathers, "
                             f"found {body[a:min(b, a + 20)].decode('ascii', 'replace').strip()!r} at character {a}")
    return spans


def _read_gather(body: bytes, a: int, b: int, i: int, single: bool) -> np.ndarray:
    """Parse the gather at body[a:b+1] into float64 [5, 1000, 70], checking its size, shape and values."""
    commas = body.count(b",", a, b)
    name = "'gathers'" if single else f"gather {i}"
    if commas > GATHER_VALUES + GATHER_LISTS:
        raise InputError(f"{name} holds more than {GATHER_VALUES} values; a gather is {GATHER_SHAPE} "
                         "[shot][time sample][receiver]")
    nested = _loads(body[a:b + 1], a, numbers_only=True)
    try:
        arr = np.asarray(nested, dtype=np.float64)
    except ValueError as e:
        raise InputError(f"{name} is not a regular nested list (ragged?): {e}") from e
    except OverflowError as e:
        raise InputError(f"{name} holds a number beyond float32's range") from e
    del nested
    if arr.shape != GATHER_SHAPE:
        raise InputError(f"gathers have shape {arr.shape}; expected (5, 1000, 70) or (B, 5, 1000, 70)"
                         if single else f"gather {i} has shape {arr.shape}; expected (5, 1000, 70)")
    if not np.isfinite(arr).all():
        raise InputError(f"gather {i} holds NaN or Inf values")
    if np.abs(arr).max() > _FLOAT32_MAX:
        raise InputError(f"gather {i} holds values beyond float32's range (+-3.4e38)")
    return arr
