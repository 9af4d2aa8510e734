"""A small Python client of the SeisBind service (httpx). Gathers go as raw .npy bytes, the service's fast path.

    >>> from service.client import SeisBindClient
    >>> with SeisBindClient("http://127.0.0.1:8000") as c:
    ...     hits = c.retrieve(gathers, k=5)            # gathers: numpy [5, 1000, 70] or [B, 5, 1000, 70]
    ...     est = c.infer_descriptors(gathers, k=5)
    ...     near = c.retrieve_by_descriptors({"v_mean": 3000.0, ...all eight...}, k=5)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote

import httpx
import numpy as np

from seisbind.npy import npy_bytes as _npy_bytes

NPY_MEDIA_TYPE = "application/x-npy"


class SeisBindError(RuntimeError):
    """A call that failed: an error response of the service (``status``, ``detail``: what is wrong,
    ``request_id``), or no response at all (``status`` 0: the service could not be reached; ``detail`` says why).
    ``url`` is the URL called."""

    def __init__(self, status: int, detail: str, request_id: str | None = None, url: str | None = None) -> None:
        where = f" from {url}" if url else ""
        head = f"HTTP {status}{where}" if status else f"cannot reach {url or 'the service'}"
        super().__init__(f"{head}: {detail}" + (f" (request id {request_id})" if request_id else ""))
        self.status = status
        self.detail = detail
        self.request_id = request_id
        self.url = url


def check_base_url(base_url: str) -> str:
    """``base_url`` if it is an absolute http(s) URL with a host; ValueError saying what is wrong otherwise."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as e:
        raise ValueError(f"bad service URL {base_url!r}: {e}") from e
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"bad service URL {base_url!r}: give scheme and host, e.g. http://127.0.0.1:8000")
    return base_url


def npy_bytes(gathers: np.ndarray) -> bytes:
    """The .npy serialisation of an array (float64 and float32 are sent as they are; the service casts)."""
    arr = np.asarray(gathers)
    if arr.dtype.kind != "f":
        raise TypeError(f"gathers: dtype {arr.dtype}; pass float32 (or float64) amplitudes")
    return _npy_bytes(np.ascontiguousarray(arr))


class SeisBindClient:
    """Client of one SeisBind service.

    Args:
        base_url: e.g. "http://127.0.0.1:8000".
        timeout: seconds per request.
        admin_token: bearer token for the admin calls (rebuild_index, job).
        client: an existing httpx.Client to use instead of creating one (e.g. to share a connection pool).
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 60.0,
                 admin_token: str | None = None, client: httpx.Client | None = None) -> None:
        self._own = client is None
        if client is None:
            check_base_url(base_url)
        self._http = client if client is not None else httpx.Client(base_url=base_url, timeout=timeout)
        self._admin_token = admin_token

    def __enter__(self) -> SeisBindClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._own:
            self._http.close()

    # -- queries ---------------------------------------------------------------------------------------------

    def retrieve(self, gathers: np.ndarray, k: int = 5, include_models: bool = False) -> dict[str, Any]:
        """Top-k bank entries of each gather ([5, 1000, 70] or [B, 5, 1000, 70]); the /retrieve response.
        With ``include_models`` each neighbour carries its velocity model as nested lists [70][70] (m/s)."""
        return self._post_npy("/retrieve", gathers, {"k": k, "include_models": str(bool(include_models)).lower()})

    def infer_descriptors(self, gathers: np.ndarray, k: int = 5, weighting: Literal["mean", "similarity"] = "mean",
                          method: Literal["blend", "neighbours"] | None = None) -> dict[str, Any]:
        """Descriptors of each gather inferred from its k nearest bank entries (and, by default, the bundle's
        descriptor readout); the /infer-descriptors response."""
        params: dict[str, Any] = {"k": k, "weighting": weighting}
        if method is not None:
            params["method"] = method
        return self._post_npy("/infer-descriptors", gathers, params)

    def retrieve_by_descriptors(self, descriptors: Mapping[str, float], k: int = 5,
                                include_models: bool = False) -> dict[str, Any]:
        """Top-k velocity models for a descriptor vector given by name (all eight); the response of /retrieve."""
        body = {"descriptors": {n: float(v) for n, v in descriptors.items()}, "k": k, "include_models": include_models}
        return self._call("POST", "/retrieve-by-descriptors", json=body)

    @staticmethod
    def velocity_models(response: dict[str, Any]) -> list[np.ndarray]:
        """The velocity models of a /retrieve response made with include_models: one [k, 70, 70] float32 array
        per query. ValueError when the response has none (made without include_models)."""
        results = response.get("results") if isinstance(response, dict) else None
        if not isinstance(results, list):
            raise ValueError("not a /retrieve response: it has no 'results' list")
        if any("velocity_model" not in n for r in results for n in r.get("neighbors", [])):
            raise ValueError("the response holds no velocity models: call retrieve(..., include_models=True) "
                             "(or retrieve_by_descriptors(..., include_models=True))")
        return [np.asarray([n["velocity_model"] for n in r["neighbors"]], np.float32) for r in results]

    # -- service state ---------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """GET /v1/info."""
        return self._call("GET", "/v1/info")

    def ready(self) -> bool:
        """Whether /readyz answers 200."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Block until the service is ready; TimeoutError (naming the URL and the last reason) otherwise."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                try:
                    r = self._http.get("/readyz")
                    why = f"/readyz answers {r.status_code}: {r.text[:200]}"
                except httpx.TransportError as e:
                    why = f"{type(e).__name__}: {e}"
                raise TimeoutError(f"service at {self._http.base_url} not ready after {timeout:g} s ({why})")
            time.sleep(interval)

    # -- admin -----------------------------------------------------------------------------------------------

    def rebuild_index(self, bank: str, index_type: str = "auto") -> str:
        """Start a rebuild from a bank under the service's bank root; returns the job id."""
        r = self._call("POST", "/admin/rebuild-index", json={"bank": bank, "index_type": index_type},
                       headers=self._admin_headers())
        return str(r["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /admin/jobs/{job_id} (the id URL-escaped: whatever it holds, it stays one path segment)."""
        return self._call("GET", f"/admin/jobs/{quote(str(job_id), safe='')}", headers=self._admin_headers())

    def wait_job(self, job_id: str, timeout: float = 600.0, interval: float = 0.2) -> dict[str, Any]:
        """Poll a job until it succeeds or fails; returns its final state (check ``state`` and ``error``)."""
        deadline = time.monotonic() + timeout
        while True:
            j = self.job(job_id)
            if j["state"] in ("succeeded", "failed"):
                return j
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {j['state']} after {timeout:g} s")
            time.sleep(interval)

    # -- plumbing --------------------------------------------------------------------------------------------

    def _admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._admin_token}"} if self._admin_token else {}

    def _post_npy(self, path: str, gathers: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, content=npy_bytes(gathers), params=params,
                          headers={"Content-Type": NPY_MEDIA_TYPE})

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """One request; SeisBindError (with the URL) for an error response or when no response came."""
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            url = str(self._http.base_url.join(path))
            raise SeisBindError(0, f"{type(e).__name__}: {e or 'no response'}", url=url) from e
        return self._check(r)

    @staticmethod
    def _check(r: httpx.Response) -> dict[str, Any]:
        url = str(r.request.url)
        if r.status_code >= 400:
            try:
                body = r.json()
                detail, rid = str(body.get("detail", r.text)), body.get("request_id")
            except (ValueError, AttributeError):
                detail, rid = r.text[:500], None
            raise SeisBindError(r.status_code, detail, rid or r.headers.get("X-Request-ID"), url=url)
        try:
            return r.json()
        except ValueError as e:
            raise SeisBindError(r.status_code, f"the response is not JSON: {r.text[:200]!r}", url=url) from e
