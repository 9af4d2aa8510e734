"""The encoder bundle, in one place: its format, typed manifest, verification, and the ONNX Runtime sessions that
run it (the only module that creates ONNX Runtime sessions). Torch-free; see docs/formats.md.

A bundle is a folder with ``seismic.onnx``, ``velocity.onnx``, ``physics.onnx`` and ``manifest.json``. Each ONNX
file takes physical units (gathers [B, 5, 1000, 70]; velocity [B, 1, 70, 70] m/s; descriptors [B, 8]) on input
``INPUT_NAMES[modality]`` and returns an L2-normalised float32 embedding [B, 256] on output ``OUTPUT_NAME``.
``bundle_id`` is the sha256 of the three ONNX files' hashes.

A bundle may also hold *variants* of a graph (e.g. ``seismic.int8.onnx``, a quantised seismic encoder): listed in
the manifest under ``variants`` with their own sha256, verified like the main graphs, not part of ``bundle_id``
(they encode into the same space, so an index built with the bundle serves with any of them). ``default_variants``
names the one a session uses unless told otherwise (``variant="full"`` forces the main, full-precision graph).
It may also hold the learned refiner, ``refiner.onnx`` (seisbind.refiner), listed in the manifest's ``sha256`` and
``refiner`` section; it too leaves ``bundle_id`` (the identity of the embedding space that indexes are bound to)
unchanged. Two optional files fitted after export ride along the same way, named by a manifest section with their
sha256 and outside ``bundle_id``: ``calibration.json`` (seisbind.calibration: confidence and the OOD flag) and
``descriptor_readout.json`` (seisbind.readout: descriptors straight from the seismic embedding).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seisbind.calibration import Calibration, CalibrationError, load_calibration
from seisbind.cores import usable_cores
from seisbind.files import (
    PathLike,
    checksum_mismatch,
    read_json,
    sha256_file,
    write_json_atomic,
)
from seisbind.readout import DescriptorReadout, ReadoutError, load_readout

if TYPE_CHECKING:
    import onnxruntime as ort

    from seisbind.refiner import LearnedRefiner

log = logging.getLogger("seisbind.bundle")

MANIFEST = "manifest.json"
MODALITIES = ("seismic", "velocity", "physics")
ONNX_FILES = {m: f"{m}.onnx" for m in MODALITIES}
INPUT_NAMES = {"seismic": "gathers", "velocity": "velocity", "physics": "descriptors"}
OUTPUT_NAME = "embedding"
REQUIRED_KEYS = ("embedding_dim", "sha256", "bundle_id", "descriptor_names", "descriptor_stats")
REFINER_FILE = "refiner.onnx"
"""The optional learned refiner's graph (seisbind.refiner), described by the manifest's ``refiner`` section."""
FULL = "full"
"""The variant name of a modality's main graph (``<modality>.onnx``, full precision)."""
AUTO = "auto"
"""Variant choice: the bundle's ``default_variants`` entry for the modality, else the main graph."""

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class BundleError(ValueError):
    """An encoder bundle that is missing, incomplete or corrupt."""


def compute_bundle_id(hashes: dict[str, str]) -> str:
    """The bundle id: sha256 over the three ONNX files' sha256, in modality order (first 16 hex digits)."""
    joined = "".join(hashes[ONNX_FILES[m]] for m in MODALITIES)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BundleManifest:
    """The typed view of ``manifest.json``; ``raw`` keeps the whole document (keys added later included)."""

    embedding_dim: int
    bundle_id: str
    sha256: dict[str, str]
    descriptor_names: tuple[str, ...]
    descriptor_stats: dict[str, list[float]]
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    logit_scale: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    refiner: dict[str, Any] | None = None
    """The learned refiner's section (k, parity, training, metrics), None when the bundle has none."""
    variants: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """{modality: {variant name: {"file", "sha256", ...}}}: extra graphs of a modality (none in older bundles)."""
    default_variants: dict[str, str] = field(default_factory=dict)
    """{modality: variant name} a session uses by default (absent: the main graph)."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, doc: Any, source: PathLike = MANIFEST) -> "BundleManifest":
        """Validate a parsed manifest; raises BundleError naming ``source`` and the missing or malformed key."""
        if not isinstance(doc, dict):
            raise BundleError(f"{source}: not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in doc]
        if missing:
            raise BundleError(f"{source}: missing key {missing[0]!r}")
        try:
            variants = {m: {n: dict(v) for n, v in dict(vs).items()}
                        for m, vs in dict(doc.get("variants") or {}).items()}
            defaults = {str(m): str(n) for m, n in dict(doc.get("default_variants") or {}).items()}
            manifest = cls(embedding_dim=int(doc["embedding_dim"]), bundle_id=str(doc["bundle_id"]),
                           sha256=dict(doc["sha256"]), descriptor_names=tuple(doc["descriptor_names"]),
                           descriptor_stats=dict(doc["descriptor_stats"]),
                           input_shapes=dict(doc.get("input_shapes", {})), logit_scale=doc.get("logit_scale"),
                           training=dict(doc.get("training") or {}), metrics=dict(doc.get("metrics") or {}),
                           parity=dict(doc.get("parity") or {}), refiner=_refiner_section(doc, source),
                           variants=variants, default_variants=defaults, raw=doc)
        except (TypeError, ValueError) as e:
            if isinstance(e, BundleError):
                raise
            raise BundleError(f"{source}: malformed manifest: {e}") from e
        manifest.check_variants(source)
        return manifest

    def check_variants(self, source: PathLike = MANIFEST) -> None:
        """Every variant names a plain file in the bundle and a sha256, under a known modality; every default names
        a listed variant. Raises BundleError naming what is wrong."""
        for m, vs in self.variants.items():
            if m not in MODALITIES:
                raise BundleError(f"{source}: variants of unknown modality {m!r}")
            for name, v in vs.items():
                f = v.get("file")
                if name in (FULL, AUTO) or not isinstance(f, str) or Path(f).name != f or f in ONNX_FILES.values() \
                        or not isinstance(v.get("sha256"), str):
                    raise BundleError(f"{source}: {m} variant {name!r}: needs a plain file name of its own and a "
                                      f"sha256 (and may not be called {FULL!r} or {AUTO!r})")
        for m, name in self.default_variants.items():
            if name != FULL and name not in self.variants.get(m, {}):
                raise BundleError(f"{source}: default {m} variant {name!r} is not among its variants")

    def graph_file(self, modality: str, variant: str = AUTO) -> tuple[str, str]:
        """(variant name, file name) of the graph a session of ``modality`` runs: ``variant`` is ``"auto"`` (the
        bundle's default for the modality, else the main graph), ``"full"`` (the main graph) or a listed variant
        name. Raises BundleError for a variant the bundle does not offer."""
        if modality not in MODALITIES:
            raise ValueError(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
        name = self.default_variants.get(modality, FULL) if variant == AUTO else variant
        if name == FULL:
            return FULL, ONNX_FILES[modality]
        offered = self.variants.get(modality, {})
        if name not in offered:
            raise BundleError(f"the bundle has no {modality} variant {name!r} (it offers: "
                              f"{', '.join([FULL, *offered])})")
        return name, str(offered[name]["file"])


def _refiner_section(doc: dict[str, Any], source: PathLike) -> dict[str, Any] | None:
    section, listed = doc.get("refiner"), REFINER_FILE in dict(doc["sha256"])
    if section is None and not listed:
        return None
    if not isinstance(section, dict) or not listed:
        raise BundleError(f"{source}: the refiner needs both a 'refiner' section and a sha256 of {REFINER_FILE}")
    return dict(section)


def read_manifest(folder: PathLike, verify: bool = True) -> BundleManifest:
    """Load a bundle's manifest; with ``verify``, check every ONNX file exists and matches its sha256 and that
    bundle_id is consistent. Raises BundleError naming the file and what is wrong."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    doc = read_json(mpath, BundleError, "an encoder bundle")
    manifest = BundleManifest.from_dict(doc, mpath)
    if verify:
        expected = {ONNX_FILES[m]: manifest.sha256.get(ONNX_FILES[m], "") for m in MODALITIES}
        if manifest.refiner is not None:
            expected[REFINER_FILE] = manifest.sha256[REFINER_FILE]
        problem = checksum_mismatch(folder, expected)
        if problem:
            raise BundleError(problem)
        if compute_bundle_id(manifest.sha256) != manifest.bundle_id:
            raise BundleError(f"{mpath}: bundle_id does not match the files' hashes")
        extra = {v["file"]: v["sha256"] for vs in manifest.variants.values() for v in vs.values()}
        problem = checksum_mismatch(folder, extra)
        if problem:
            raise BundleError(problem)
    return manifest


def finish_manifest(folder: PathLike, doc: dict[str, Any]) -> BundleManifest:
    """Add the ONNX files' sha256 and the bundle_id to ``doc`` and write it atomically into ``folder``. The
    refiner's graph is hashed too when ``doc`` has a ``refiner`` section (then the file must be there)."""
    folder = Path(folder)
    hashes = {ONNX_FILES[m]: sha256_file(folder / ONNX_FILES[m]) for m in MODALITIES}
    if doc.get("refiner") is not None:
        hashes[REFINER_FILE] = sha256_file(folder / REFINER_FILE)
    doc = {**doc, "sha256": hashes, "bundle_id": compute_bundle_id(hashes)}
    write_json_atomic(folder / MANIFEST, doc)
    return BundleManifest.from_dict(doc, folder / MANIFEST)


def select_providers(available: list[str] | None = None) -> list[str]:
    """Execution providers to use: CUDA first when ONNX Runtime offers it, then CPU. Logs the choice."""
    import onnxruntime as ort

    if available is None:
        available = ort.get_available_providers()
    chosen = [CUDA, CPU] if CUDA in available else [CPU]
    log.info("onnxruntime providers: %s (available: %s)", chosen, list(available))
    return chosen


def create_session(path: PathLike, providers: list[str] | None = None, threads: int | None = None,
                   allow_spinning: bool = True) -> "ort.InferenceSession":
    """An ONNX Runtime session of one graph: ``providers`` (default :func:`select_providers`), ``threads`` intra-op
    threads (default: the usable cores), one inter-op thread, all graph optimisations; ``allow_spinning=False``
    frees the cores between runs. Raises BundleError when the file is missing or ONNX Runtime cannot load it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    requested = providers if providers is not None else select_providers()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=requested)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise BundleError(f"{path}: ONNX Runtime cannot load it: {e}") from e
    if CUDA in requested and CUDA not in session.get_providers():
        log.warning("%s: CUDA was requested but ONNX Runtime runs it on %s", path, session.get_providers())
    return session


class OnnxEncoder:
    """One modality's ONNX encoder: ``encode(x)`` maps a batch in physical units to L2-normalised embeddings.

    Args:
        bundle_dir: encoder bundle folder.
        modality: "seismic", "velocity" or "physics".
        providers: ONNX Runtime execution providers; default :func:`select_providers`.
        intra_op_threads: threads per session run; default the process's usable cores.
        allow_spinning: let idle intra-op threads spin-wait (lowest latency on dedicated cores); False frees
            the cores between runs (a service sharing its cores with an event loop, a busy machine).
        filename: the graph file in the bundle (default the modality's main graph, ``<modality>.onnx``).
        variant: the variant name that file is, for logs and reports (``"full"``: the main graph).
    """

    def __init__(self, bundle_dir: PathLike, modality: str, providers: list[str] | None = None,
                 intra_op_threads: int | None = None, allow_spinning: bool = True, filename: str | None = None,
                 variant: str = FULL) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
        self.modality = modality
        self.variant = variant
        self.path = Path(bundle_dir) / (filename or ONNX_FILES[modality])
        self.allow_spinning = allow_spinning
        self.session = create_session(self.path, providers, intra_op_threads, allow_spinning)
        self.providers: list[str] = list(self.session.get_providers())
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_name = INPUT_NAMES[modality]
        if self.input_name not in inputs:
            raise BundleError(f"{self.path}: no input named {self.input_name!r} (has {sorted(inputs)})")
        if OUTPUT_NAME not in {o.name for o in self.session.get_outputs()}:
            raise BundleError(f"{self.path}: no output named {OUTPUT_NAME!r}")
        self.input_shape: tuple[Any, ...] = tuple(inputs[self.input_name].shape)
        log.info("%s encoder %s (variant %s) on %s, %d intra-op threads", modality, self.path, variant,
                 self.providers, intra_op_threads or usable_cores())

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate a batch against the model's input shape; returns it as contiguous float32.
        Raises TypeError for a non-float dtype, ValueError for a wrong shape or NaN/Inf."""
        x = np.asarray(x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{self.modality} input: dtype {x.dtype}, expected float32 (or float64)")
        tail = self.input_shape[1:]
        if x.ndim != len(self.input_shape) or any(isinstance(t, int) and s != t for s, t in zip(x.shape[1:], tail)):
            want = ", ".join(str(t) if isinstance(t, int) else "?" for t in tail)
            raise ValueError(f"{self.modality} input: shape {tuple(x.shape)}, expected (batch, {want})")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{self.modality} input: holds NaN or Inf values")
        return x

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Embed a batch: ``x`` in physical units with a leading batch axis -> [batch, dim] float32, L2-normalised."""
        return self.run(self.check_input(x))

    def run(self, x: np.ndarray) -> np.ndarray:
        """``encode`` without the checks, for a batch that has passed ``check_input`` (or an equivalent check):
        contiguous float32 of the model's input shape, finite."""
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        (out,) = self.session.run([OUTPUT_NAME], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)

    @property
    def dim(self) -> int:
        """Embedding size, from the model's output shape (256 in a valid bundle)."""
        shape = self.session.get_outputs()[0].shape
        return int(shape[-1]) if isinstance(shape[-1], int) else -1


class EncoderBundle:
    """A verified encoder bundle: ``.manifest``, ``.bundle_id``, ``.calibration`` and ``.readout`` (or None), and
    lazily created ``.seismic``, ``.velocity``, ``.physics`` :class:`OnnxEncoder` sessions and ``.refiner`` (the
    learned refiner, None when the bundle has none), each created once, thread-safely, with the given session
    options.

    ``variants`` chooses each modality's graph ({modality: "auto" | "full" | variant name}, default "auto": what
    the bundle offers as default); a variant the bundle lacks is a BundleError here, not at first use."""

    def __init__(self, bundle_dir: PathLike, providers: list[str] | None = None,
                 intra_op_threads: int | None = None, allow_spinning: bool = True,
                 variants: dict[str, str] | None = None) -> None:
        self.dir = Path(bundle_dir)
        self.manifest = read_manifest(self.dir, verify=True)
        self.graphs = {m: self.manifest.graph_file(m, (variants or {}).get(m, AUTO)) for m in MODALITIES}
        """{modality: (variant name, file name)} of the graph each session runs."""
        self.bundle_id = self.manifest.bundle_id
        self.embedding_dim = self.manifest.embedding_dim
        try:
            self.calibration: Calibration | None = load_calibration(self.dir, self.manifest.raw)
        except CalibrationError as e:
            raise BundleError(str(e)) from e
        """The fitted confidence and OOD flag (seisbind.calibration), or None for a bundle without one."""
        try:
            self.readout: DescriptorReadout | None = load_readout(self.dir, self.manifest.raw)
        except ReadoutError as e:
            raise BundleError(str(e)) from e
        """The descriptor readout (seisbind.readout), or None for a bundle without one."""
        self._providers = providers
        self._threads = intra_op_threads
        self._spinning = allow_spinning
        self._encoders: dict[str, OnnxEncoder] = {}
        self._refiner: "LearnedRefiner | None" = None
        self._lock = threading.Lock()

    def encoder(self, modality: str) -> OnnxEncoder:
        """The session of one modality, created on first use."""
        if modality not in MODALITIES:
            raise ValueError(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
        with self._lock:
            if modality not in self._encoders:
                variant, filename = self.graphs[modality]
                self._encoders[modality] = OnnxEncoder(self.dir, modality, self._providers, self._threads,
                                                         self._spinning, filename=filename, variant=variant)
            return self._encoders[modality]

    @property
    def seismic(self) -> OnnxEncoder:
        return self.encoder("seismic")

    @property
    def velocity(self) -> OnnxEncoder:
        return self.encoder("velocity")

    @property
    def physics(self) -> OnnxEncoder:
        return self.encoder("physics")

    @property
    def has_refiner(self) -> bool:
        """Whether the bundle holds a learned refiner (no session is created)."""
        return self.manifest.refiner is not None

    @property
    def refiner(self) -> "LearnedRefiner | None":
        """The learned refiner's session (created on first use), or None when the bundle has no refiner.onnx.
        Raises BundleError when its graph does not have the k the manifest states."""
        if self.manifest.refiner is None:
            return None
        from seisbind.refiner import LearnedRefiner

        with self._lock:
            if self._refiner is None:
                refiner = LearnedRefiner(self.dir / REFINER_FILE, self._providers, self._threads, self._spinning)
                k = self.manifest.refiner.get("k")
                if k is not None and int(k) != refiner.k:
                    raise BundleError(f"{self.dir / MANIFEST}: refiner k={k}, but its graph takes k={refiner.k}")
                self._refiner = refiner
            return self._refiner
