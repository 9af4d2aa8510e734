"""The web page: GET / (index.html), GET /web/{name} (its scripts and styles), GET /example/query.npy (the bundled
example gather, when SEISBIND_EXAMPLE_GATHER names one). Static files from the package (service/web/), no build step,
nothing from another origin; every page response carries a strict Content-Security-Policy (docs/webpage.md)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from service.api.deps import StateDep
from service.inputs import NPY_MEDIA_TYPE

router = APIRouter(tags=["web page"], include_in_schema=False)

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data: blob:",
    "connect-src 'self'", "font-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'",
    "frame-ancestors 'none'",
])
"""Scripts, styles and requests from this origin only; no inline script or style; never framed."""

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-cache",
}
"""Headers of every page response (the page, its assets, the example gather)."""

MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


@cache
def page_files() -> dict[str, bytes]:
    """The page's files by name (service/web/*), read once from the installed package."""
    folder = resources.files("service") / "web"
    return {f.name: f.read_bytes() for f in folder.iterdir()
            if f.is_file() and any(f.name.endswith(ext) for ext in MEDIA_TYPES)}


def _page_file(name: str) -> Response:
    body = page_files().get(name)
    if body is None:
        raise HTTPException(404, f"no page file {name[:80]!r}")
    media = next(m for ext, m in MEDIA_TYPES.items() if name.endswith(ext))
    return Response(body, media_type=media, headers=PAGE_HEADERS)


@router.get("/", summary="The web page")
async def index_page() -> Response:
    return _page_file("index.html")


@router.get("/web/{name}", summary="A script or style of the web page")
async def page_asset(name: str) -> Response:
    if name == "index.html":
        raise HTTPException(404, "the page is at /")
    return _page_file(name)


@router.get("/example/query.npy", summary="The bundled example gather (SEISBIND_EXAMPLE_GATHER)")
async def example_gather(state: StateDep) -> Response:
    """The configured example gather as .npy bytes; 404 saying why when there is none. An example larger than the
    request-body limit is refused too: the page could not send it back to the API."""
    path, limit = state.settings.example_gather, state.settings.max_body_bytes
    if path is None:
        raise HTTPException(404, "no example gather is configured on this server (set SEISBIND_EXAMPLE_GATHER to a "
                                 ".npy gather; the quickstart serves <workdir>/example/query.npy)")
    if not path.is_file():
        raise HTTPException(404, "the configured example gather (SEISBIND_EXAMPLE_GATHER) is not a file on this server")
    try:
        size = path.stat().st_size
        if size > limit:
            raise HTTPException(404, f"the configured example gather is {size} bytes, over the request-body limit "
                                     f"of {limit} bytes (SEISBIND_MAX_BODY_BYTES)")
        body = await state.engine.run_blocking(path.read_bytes)
    except OSError as e:  # gone or unreadable since the check
        raise HTTPException(404, "the configured example gather (SEISBIND_EXAMPLE_GATHER) cannot be read by the "
                                 f"service ({e.strerror or type(e).__name__})") from None
    headers = {**PAGE_HEADERS, "Content-Disposition": 'attachment; filename="query.npy"'}
    return Response(body, media_type=NPY_MEDIA_TYPE, headers=headers)
