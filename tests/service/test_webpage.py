"""The web page at GET /, in a real browser: Debian's Chromium driven headless by Playwright, against real uvicorn
processes serving a real (untrained) encoder bundle and FAISS index (tests/service_fixtures.py).

* ``served``: an index of 300 flatvel-a models and an example gather simulated from a model of that family
  (SEISBIND_EXAMPLE_GATHER): the example and an uploaded file show what /retrieve and /infer-descriptors return,
  the physics query shows what /retrieve-by-descriptors returns, bad files and bad values show the service's own
  error next to their control, downloads hold the models /retrieve returned, the page keeps its CSP;
* ``empty``: no index: the page says the service is not ready, with /readyz's reason, and the example button says
  that no example is configured.

Screenshots of every state go to tests/artifacts/webpage/ (SEISBIND_TEST_ARTIFACTS overrides the folder).
SEISBIND_WEBPAGE_WORKDIR=<quickstart work folder> serves that quickstart's bundle, index and example instead (how
docs/images/webpage.png is taken).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from seisbind.descriptors import DESCRIPTOR_NAMES

from tests.redis_fixtures import RedisServer, WorkerProcess
from tests.service_fixtures import NPY, REPO, Server, npy, serve, small_service_files, stop_server

CHROMIUM = Path(os.environ.get("SEISBIND_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("SEISBIND_TEST_ARTIFACTS", REPO / "tests" / "artifacts")) / "webpage"
WORKDIR = os.environ.get("SEISBIND_WEBPAGE_WORKDIR")
WAIT_MS = 60_000

pytestmark = pytest.mark.timeout(600)


# -- servers ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundle, index root and example gather: a small bank and a simulated gather, or a quickstart's."""
    root = tmp_path_factory.mktemp("webpage")
    if WORKDIR:
        w = Path(WORKDIR)
        return {"bundle": w / "bundle", "index": w / "indexes", "example": w / "example" / "query.npy", "root": root,
                "bank": w / "bank"}
    import torch

    from model.families import generate
    from model.simulator import simulate

    bundle, banks, index = small_service_files(root, 300)
    torch.set_num_threads(1)
    gather = simulate(generate("flatvel-a", 1, np.random.default_rng(7)))  # [1, 5, 1000, 70]
    example = root / "example" / "query.npy"
    example.parent.mkdir()
    np.save(example, gather.astype(np.float32))
    return {"bundle": bundle, "index": index, "example": example, "root": root, "bank": banks / "bank_a"}


@pytest.fixture(scope="module")
def served(files: dict[str, Path]) -> Iterator[Server]:
    """The service with a refinement queue on a real redis-server and one refinement worker."""
    redis_server = RedisServer(files["root"] / "redis")
    worker = WorkerProcess(redis_server.url, files["root"] / "worker.log", "webpage")
    server = serve(files["bundle"], files["index"], files["root"] / "served.log",
                   env={"SEISBIND_EXAMPLE_GATHER": str(files["example"]), "SEISBIND_ENCODE_WORKERS": "1",
                        "SEISBIND_REDIS_URL": redis_server.url})
    yield server
    stop_server(server)
    worker.stop()
    redis_server.stop()


@pytest.fixture(scope="module")
def empty(files: dict[str, Path]) -> Iterator[Server]:
    """The same bundle over an index root without any index: up, not ready; no example configured."""
    (files["root"] / "no-index").mkdir()
    server = serve(files["bundle"], files["root"] / "no-index", files["root"] / "empty.log", ready=False,
                   env={"SEISBIND_ENCODE_WORKERS": "1", "SEISBIND_INDEX_POLL_S": "1"})
    yield server
    stop_server(server)


# -- the browser -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: scripts/test.sh installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; fails the test on any script error or Content-Security-Policy violation it logs."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    pg.on("console", lambda m: problems.append(f"console: {m.text}")
          if m.type == "error" and ("Content Security Policy" in m.text or "Uncaught" in m.text) else None)
    yield pg
    context.close()
    assert not problems, problems


def shot(pg: Page, name: str, element: str | None = None) -> Path:
    """Save a screenshot (the full page, or one element) as a test artifact; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if element:
        pg.locator(element).screenshot(path=str(path))
    else:
        pg.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def open_page(pg: Page, server: Server) -> None:
    pg.goto(server.url + "/")
    expect(pg.locator("body[data-loaded='1']")).to_have_count(1, timeout=WAIT_MS)


def top_card(pg: Page, panel: str) -> Locator:
    return pg.locator(f"#{panel}-cards li.card[data-rank='1']")


def check_cards(pg: Page, panel: str, expected: dict) -> None:
    """The cards show the neighbours of ``expected`` (one /retrieve result) in order: ids, scores, descriptors."""
    neighbors = expected["neighbors"]
    cards = pg.locator(f"#{panel}-cards li.card")
    expect(cards).to_have_count(len(neighbors), timeout=WAIT_MS)
    for i, n in enumerate(neighbors):
        card = cards.nth(i)
        expect(card.locator(".model-id")).to_have_text(n["id"])
        expect(card.locator(".score")).to_have_text(f"score {n['score']:.4f}")
        assert float(card.locator(".score").get_attribute("data-score")) == pytest.approx(n["score"], abs=1e-12)
        assert card.locator("canvas[role='img']").get_attribute("aria-label").startswith(f"Velocity model {n['id']}")
        expect(card.locator("table.descriptors tbody tr")).to_have_count(len(n["descriptors"]))
        marked = n["rank"] == expected["consensus_rank"] and len(neighbors) > 1
        expect(card.locator(".consensus")).to_have_count(1 if marked else 0)


# -- the page and its headers ----------------------------------------------------------------------------------

class _Inline(HTMLParser):
    """Collects inline scripts, inline styles and style attributes of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and not a.get("src"):
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style> element")
        if "style" in a:
            self.found.append(f"style attribute on <{tag}>")
        self.found += [f"{k} handler on <{tag}>" for k in a if k.startswith("on")]
        for k in ("src", "href"):
            if a.get(k) and re.match(r"^(https?:)?//", a[k] or ""):
                self.found.append(f"outside asset {a[k]}")


def test_page_is_served_with_security_headers_and_no_inline_code(served: Server) -> None:
    with served.client() as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        parser = _Inline()
        parser.feed(r.text)
        assert parser.found == []
        for name, media in (("app.js", "text/javascript"), ("npy.js", "text/javascript"),
                            ("plots.js", "text/javascript"), ("style.css", "text/css")):
            a = c.get(f"/web/{name}")
            assert a.status_code == 200 and a.headers["content-type"].startswith(media), name
            assert a.headers["content-security-policy"] == csp and a.headers["x-content-type-options"] == "nosniff"
            assert not re.search(r"https?://", a.text), f"{name} refers to another origin"
        for bad in ("/web/nothing.js", "/web/..%2Fapp.py", "/web/index.html"):
            r = c.get(bad)
            assert r.status_code == 404 and r.json()["detail"], bad
        # the JSON API itself is unchanged: no page headers forced onto it
        assert c.get("/readyz").headers["content-type"] == "application/json"


def test_example_endpoint_serves_the_configured_gather_or_says_why_not(served: Server, empty: Server,
                                                                       files: dict[str, Path]) -> None:
    r = httpx.get(served.url + "/example/query.npy")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    assert r.content == files["example"].read_bytes()
    r = httpx.get(empty.url + "/example/query.npy")
    assert r.status_code == 404 and "SEISBIND_EXAMPLE_GATHER" in r.json()["detail"]


def test_an_installed_wheel_carries_every_page_file(tmp_path: Path) -> None:
    """The page is package data: a wheel built from the source holds every file of service/web/."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    for name in ("seisbind", "model", "index", "service"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w",
                    str(tmp_path / "dist")], check=True, cwd=src, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("seisbind-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    page = {f"service/web/{f.name}" for f in (REPO / "service" / "web").iterdir() if f.is_file()}
    assert page and page <= names, sorted(page - names)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_a_misconfigured_example_gets_a_clear_404(files: dict[str, Path], tmp_path: Path) -> None:
    """A missing file, a folder, or a file over the body limit: 404 naming the problem, never a 500 (in-process)."""
    import numpy as np
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.core.config import Settings, npy_bytes_of_gathers

    limit = npy_bytes_of_gathers(1)  # one gather fits (the settings refuse a limit that cannot), two do not
    two = tmp_path / "two.npy"
    np.save(two, np.zeros((2, 5, 1000, 70), np.float32))
    cases = {tmp_path / "missing.npy": "is not a file", tmp_path: "is not a file",
             two: f"over the request-body limit of {limit} bytes"}
    for path, fragment in cases.items():
        settings = Settings(encoders=files["bundle"], index_root=files["index"], example_gather=path,
                            max_body_bytes=limit, max_gathers=1, index_poll_s=0, encode_workers=1)
        with TestClient(create_app(settings)) as c:
            r = c.get("/example/query.npy")
        assert r.status_code == 404 and fragment in r.json()["detail"], (path, r.text)
        assert str(tmp_path) not in r.json()["detail"]  # no server paths in the answer


# -- seismic queries -------------------------------------------------------------------------------------------

def test_empty_state_before_any_query(page: Page, served: Server) -> None:
    open_page(page, served)
    expect(page.locator("#seismic-empty")).to_be_visible()
    expect(page.locator("#physics-empty")).to_be_visible()
    expect(page.locator("#ready-banner")).to_be_hidden()
    expect(page.get_by_role("button", name="Search")).to_be_enabled()
    with served.client() as c:
        info = c.get("/v1/info").json()
    expect(page.locator("#info-encoder")).to_have_text(info["encoder"])
    expect(page.locator("#info-index")).to_have_text(info["index_version"])
    expect(page.locator("#info-count")).to_contain_text(str(info["count"]))
    paths = json.loads(httpx.get(served.url + "/openapi.json").text)["paths"]
    if "/refine" not in paths:
        expect(page.locator("#refine")).to_be_hidden()
    shot(page, "01-empty")


def test_uploaded_gather_shows_the_retrieve_top1_and_inferred_descriptors(page: Page, served: Server,
                                                                          files: dict[str, Path]) -> None:
    body = files["example"].read_bytes()
    with served.client() as c:
        expected = c.post("/retrieve?k=5&include_models=true", content=body, headers=NPY).json()
        inferred = c.post("/infer-descriptors?k=5", content=body, headers=NPY).json()
    open_page(page, served)
    page.get_by_label("Choose or drop a gather file").set_input_files(str(files["example"]))
    expect(page.locator("#shot-row canvas[role='img']")).to_have_count(5, timeout=WAIT_MS)
    check_cards(page, "seismic", expected["results"][0])
    top1 = expected["results"][0]["neighbors"][0]
    expect(top_card(page, "seismic").locator(".model-id")).to_have_text(top1["id"])
    expect(top_card(page, "seismic").locator(".score")).to_have_text(f"score {top1['score']:.4f}")
    expect(page.locator("#seismic-meta")).to_contain_text(expected["index_version"])
    rows = page.locator("#inferred-table tbody tr")
    expect(rows).to_have_count(len(DESCRIPTOR_NAMES))
    for name in DESCRIPTOR_NAMES:
        est = inferred["results"][0]["descriptors"][name]
        row = page.locator(f"#inferred-table tr[data-name='{name}']")
        digits = 1 if est["unit"] == "m/s" else 3
        expect(row.locator("td").nth(0)).to_have_text(f"{est['value']:.{digits}f}")
        expect(row.locator("td").nth(1)).to_have_text(f"± {est['std']:.{digits}f}")
    for label in page.locator("#shot-row canvas").evaluate_all("cs => cs.map(c => c.getAttribute('aria-label'))"):
        assert re.match(r"Shot \d of 5, source at \d+ m: 1000 ms", label)
    expect(page.locator("#seismic-colorbar")).to_have_attribute("aria-label", re.compile(r"\d+ m/s .* \d+ m/s"))
    shot(page, "02-results")
    shot(page, "02-results-panel", element="#seismic")  # docs/images/webpage.png

    # downloads: the rank-1 model as .npy, all models as .npy, the results as JSON
    with page.expect_download() as d:
        top_card(page, "seismic").get_by_role("button", name=re.compile("Download model")).click()
    model = np.load(d.value.path())
    assert model.dtype == np.float32 and model.shape == (1, 70, 70)
    np.testing.assert_array_equal(model[0], np.asarray(top1["velocity_model"], dtype=np.float32))
    with page.expect_download() as d:
        page.get_by_role("button", name="Download all models (.npy)").first.click()
    models = np.load(d.value.path())
    assert models.shape == (5, 1, 70, 70)
    np.testing.assert_array_equal(models[:, 0], np.asarray([n["velocity_model"] for n in
                                                            expected["results"][0]["neighbors"]], np.float32))
    with page.expect_download() as d:
        page.get_by_role("button", name="Download results (JSON)").first.click()
    doc = json.loads(Path(d.value.path()).read_text())
    assert doc["retrieve"]["results"] == expected["results"]
    assert doc["infer_descriptors"]["results"] == inferred["results"]


def test_bundled_example_by_keyboard(page: Page, served: Server, files: dict[str, Path]) -> None:
    with served.client() as c:
        expected = c.post("/retrieve?k=3&include_models=true", content=files["example"].read_bytes(),
                          headers=NPY).json()
    open_page(page, served)
    k = page.get_by_label("Models to return (k)").first
    k.fill("3")
    page.get_by_role("button", name="Use the bundled example").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#seismic-cards li.card")).to_have_count(3, timeout=WAIT_MS)
    check_cards(page, "seismic", expected["results"][0])
    expect(page.locator("#file-name")).to_contain_text("example")
    # every control has a label, every canvas a text alternative
    unlabeled = page.evaluate("""() => [...document.querySelectorAll('input, select, button')]
        .filter(e => !e.closest('[hidden]'))
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.id || e.outerHTML)""")
    assert unlabeled == []
    silent = page.evaluate("""() => [...document.querySelectorAll('canvas')].filter(c => !c.closest('[hidden]'))
        .filter(c => c.getAttribute('role') !== 'img' || !c.getAttribute('aria-label')).map(c => c.id || 'canvas')""")
    assert silent == []


def test_bad_files_show_the_service_error_next_to_the_file_control(page: Page, served: Server,
                                                                   tmp_path: Path) -> None:
    wrong_shape = tmp_path / "wrong_shape.npy"
    np.save(wrong_shape, np.zeros((5, 999, 70), np.float32))
    not_npy = tmp_path / "notes.npy"
    not_npy.write_text("these are not seismic data\n")
    open_page(page, served)
    for path in (wrong_shape, not_npy):
        with served.client() as c:
            detail = c.post("/retrieve?k=5&include_models=true", content=path.read_bytes(), headers=NPY).json()
        assert detail["status"] == 422
        page.get_by_label("Choose or drop a gather file").set_input_files(str(path))
        error = page.locator("#gather-error")
        expect(error).to_contain_text(detail["detail"], timeout=WAIT_MS)
        expect(error).to_contain_text("HTTP 422")
        expect(page.locator("#seismic-empty")).to_be_visible()
    expect(page.locator("#shots-caption")).to_contain_text("not a .npy file")
    shot(page, "03-bad-file")
    # a k the service refuses: its words, next to the form
    page.get_by_label("Models to return (k)").first.fill("0")
    page.get_by_role("button", name="Use the bundled example").click()
    expect(page.locator("#gather-error")).to_contain_text("k=0 is out of range", timeout=WAIT_MS)
    expect(page.locator("#gather-error")).to_contain_text("HTTP 422")


def segy_bytes(gather: np.ndarray, dt_us: int = 1000) -> bytes:
    """A minimal big-endian IEEE-float SEG-Y rev 1 file of one gather [5, nt, 70]: one trace per receiver, shots
    as FieldRecord 1..5, sampled every ``dt_us`` microseconds, source and receiver x in metres."""
    nt = gather.shape[1]
    text = b" " * 3200
    binary = bytearray(400)
    struct.pack_into(">h", binary, 16, dt_us)  # sample interval, microseconds
    struct.pack_into(">h", binary, 20, nt)  # samples per trace
    struct.pack_into(">h", binary, 24, 5)  # IEEE float
    struct.pack_into(">H", binary, 300, 0x0100)  # revision 1
    struct.pack_into(">h", binary, 302, 1)  # fixed trace length (no extended textual headers: 304 stays 0)
    out = [text, bytes(binary)]
    for s, src in enumerate((0, 17, 34, 52, 69)):
        for r in range(70):
            h = bytearray(240)
            struct.pack_into(">i", h, 0, s * 70 + r + 1)
            struct.pack_into(">i", h, 8, s + 1)  # FieldRecord
            struct.pack_into(">i", h, 12, r + 1)
            struct.pack_into(">h", h, 70, 1)  # coordinate scalar
            struct.pack_into(">i", h, 72, src * 10)  # source x
            struct.pack_into(">i", h, 80, r * 10)  # group x
            struct.pack_into(">h", h, 114, nt)
            struct.pack_into(">h", h, 116, dt_us)
            out += [bytes(h), gather[s, :, r].astype(">f4").tobytes()]
    return b"".join(out)


def test_segy_is_sent_as_segy_and_the_answer_shown(page: Page, served: Server, files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """Works whether the service ingests SEG-Y or not: the page shows the ingest warnings (2 ms data: the time axis
    is resampled), or the service's error."""
    path = tmp_path / "example.sgy"
    path.write_bytes(segy_bytes(np.load(files["example"])[0][:, ::2], dt_us=2000))
    with served.client() as c:
        r = c.post("/retrieve?k=5&include_models=true", content=path.read_bytes(),
                   headers={"Content-Type": "application/x-segy"})
    open_page(page, served)
    with page.expect_request(lambda q: q.url.endswith("include_models=true") and q.method == "POST") as req:
        page.get_by_label("Choose or drop a gather file").set_input_files(str(path))
    assert req.value.headers["content-type"] == "application/x-segy"
    if r.status_code >= 400:
        expect(page.locator("#gather-error")).to_contain_text(r.json()["detail"], timeout=WAIT_MS)
        expect(page.locator("#gather-error")).to_contain_text(f"HTTP {r.status_code}")
    else:
        doc = r.json()
        check_cards(page, "seismic", doc["results"][0])
        warnings = (doc.get("ingest") or {}).get("warnings") or []
        items = page.locator("#ingest-warnings li")
        expect(items).to_have_count(len(warnings))
        for i, w in enumerate(warnings):
            expect(items.nth(i)).to_contain_text(w if isinstance(w, str) else w["message"])
    shot(page, "04-segy")


# -- physics queries -------------------------------------------------------------------------------------------

def test_physics_query_shows_what_retrieve_by_descriptors_returns(page: Page, served: Server) -> None:
    values = {"v_mean": 3100.0, "v_std": 700.0, "v_min": 1700.0, "v_max": 4300.0, "v_top": 1800.0,
              "v_bottom": 4200.0, "grad_z": 3.5, "grad_x": 0.0}
    with served.client() as c:
        expected = c.post("/retrieve-by-descriptors", json={"descriptors": values, "k": 4,
                                                            "include_models": True}).json()
    open_page(page, served)
    for name, v in values.items():
        page.locator(f"#d-{name}").fill(f"{v:g}")
    page.locator("#physics-k").fill("4")
    page.get_by_role("button", name="Find models").click()
    check_cards(page, "physics", expected["results"][0])
    expect(page.locator("#physics-status")).to_have_text("Found 4 matching models.")
    shot(page, "05-physics")

    # a value outside the sensible range: said next to the form, nothing sent
    page.locator("#d-v_mean").fill("90000")
    page.get_by_role("button", name="Find models").click()
    expect(page.locator("#physics-error")).to_contain_text("v_mean: 90000 m/s is outside the sensible range")
    page.get_by_role("button", name="Reset to defaults").click()
    # a k over the index size: the service's 422, in its words
    with served.client() as c:
        count = c.get("/v1/info").json()["count"]
        defaults = {n: float(page.locator(f"#d-{n}").input_value()) for n in DESCRIPTOR_NAMES}
        refused = c.post("/retrieve-by-descriptors", json={"descriptors": defaults, "k": count + 1}).json()
    page.locator("#physics-k").fill(str(count + 1))
    page.get_by_role("button", name="Find models").click()
    expect(page.locator("#physics-error")).to_contain_text(refused["detail"], timeout=WAIT_MS)
    expect(page.locator("#physics-empty")).to_be_visible()


# -- not ready -------------------------------------------------------------------------------------------------

def test_not_ready_state_shows_the_reason_and_turns_queries_off(page: Page, empty: Server,
                                                                files: dict[str, Path]) -> None:
    r = httpx.get(empty.url + "/readyz")
    assert r.status_code == 503
    open_page(page, empty)
    banner = page.locator("#ready-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(r.json()["reason"])
    expect(page.get_by_role("button", name="Search")).to_be_disabled()
    expect(page.get_by_role("button", name="Find models")).to_be_disabled()
    page.get_by_role("button", name="Use the bundled example").click()
    expect(page.locator("#example-error")).to_contain_text("no example gather is configured")
    expect(page.locator("#example-error")).to_contain_text("HTTP 404")
    shot(page, "06-not-ready")

    # an index appears (built by another process): the page notices by itself and turns queries on
    from index.build import build_index

    version = build_index(files["bundle"], files["bank"], files["root"] / "no-index", index_type="flat")
    expect(banner).to_be_hidden(timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Search")).to_be_enabled()
    expect(page.locator("#info-index")).to_have_text(version)

# -- refinement ------------------------------------------------------------------------------------------------

def test_refinement_runs_to_completion(page: Page, served: Server) -> None:
    """A real refinement job: the page submits it, a real worker runs FWI, the page polls it to the end."""
    open_page(page, served)
    page.get_by_role("button", name="Use the bundled example").click()
    expect(page.locator("#seismic-cards li.card")).to_have_count(5, timeout=WAIT_MS)
    expect(page.locator("#refine")).to_be_visible()
    page.get_by_label("Method").select_option("fwi")
    page.get_by_label("Start model").select_option("bestfit")
    page.get_by_label("Iterations").fill("3")
    page.get_by_role("button", name="Start refinement").click()
    expect(page.locator("#refine-status")).to_have_text("Refinement finished.", timeout=300_000)
    expect(page.locator("#refine-compare canvas[role='img']")).to_have_count(2)
    expect(page.locator("#refine-error")).to_be_empty()
    expect(page.locator("#refine-fit tbody tr")).to_have_count(5)  # the worker's misfit of each retrieved model
    expect(page.locator("#refine-fit tr.best-fit")).to_have_count(1)
    expect(page.locator("#refine-start-caption")).to_contain_text("Start model: best data fit")
    shot(page, "07-refined")


def test_a_batch_shows_each_gather_and_its_results(page: Page, served: Server, files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    one = np.load(files["example"])[0]
    batch = np.stack([one, np.ascontiguousarray(one[::-1, :, ::-1])])  # and the gather of the mirrored model
    path = tmp_path / "batch.npy"
    np.save(path, batch)
    with served.client() as c:
        expected = c.post("/retrieve?k=5&include_models=true", content=npy(batch), headers=NPY).json()
    open_page(page, served)
    page.get_by_label("Choose or drop a gather file").set_input_files(str(path))
    check_cards(page, "seismic", expected["results"][0])
    page.get_by_label("Gather", exact=True).select_option("1")
    expect(page.locator("#shots-caption")).to_contain_text("of gather 2")
    check_cards(page, "seismic", expected["results"][1])
    page.get_by_label("Colours saturate at").select_option("99.5")
    expect(page.locator("#shot-row canvas").first).to_have_attribute("aria-label", re.compile("clipped at"))


def test_a_dropped_file_is_queried(page: Page, served: Server) -> None:
    open_page(page, served)
    transfer = page.evaluate_handle("""async () => {
        const bytes = await (await fetch('/example/query.npy')).arrayBuffer();
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'dropped.npy', {type: 'application/x-npy'}));
        return dt;
    }""")
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#file-name")).to_contain_text("dropped.npy")
    expect(page.locator("#seismic-cards li.card")).to_have_count(5, timeout=WAIT_MS)


def test_refine_controls_follow_the_documented_shapes(page: Page, served: Server) -> None:
    """The page's refinement code against the /refine shapes of docs/api.md: the browser's requests to /refine are
    answered here (a contract check of the page, not of any refinement; the real one is
    test_refinement_runs_to_completion). Without /refine in /openapi.json the controls stay hidden."""

    def without_refine(route: object) -> None:
        doc = route.fetch().json()
        doc["paths"].pop("/refine", None)
        route.fulfill(json=doc)

    page.route("**/openapi.json", without_refine)
    open_page(page, served)
    expect(page.locator("#refine")).to_be_hidden()
    page.unroute("**/openapi.json")

    polls: list[str] = []
    seen: dict[str, object] = {}
    refined = np.full((70, 70), 2500.0)
    refined[35:] = 4000.0

    def openapi(route: object) -> None:
        doc = route.fetch().json()
        doc["paths"]["/refine"] = {"post": {"summary": "refinement"}}
        route.fulfill(json=doc)

    def refine(route: object) -> None:
        req = route.request
        if req.method == "POST":
            seen.update(url=req.url, ctype=req.headers.get("content-type"), size=len(req.post_data_buffer or b""))
            route.fulfill(status=202, json={"job_id": "job-1"})
            return
        polls.append(req.url)
        n = len(polls)
        if n < 3:
            route.fulfill(json={"state": "running", "progress": n / 3, "iteration": n, "misfit": [1.0, 0.5][:n],
                                "error": None, "result": None})
        else:
            route.fulfill(json={"state": "succeeded", "progress": 1.0, "iteration": 3, "misfit": [1.0, 0.5, 0.3],
                                "error": None, "result": {"velocity_model": refined.tolist(),
                                                          "descriptors": {"v_mean": 3250.0}, "start_ids": ["a", "b"],
                                                          "neighbour_misfits": [0.31, 0.12], "best_fit_rank": 1}})

    page.route("**/openapi.json", openapi)
    page.route(re.compile(r".*/refine(\?.*|/.*)?$"), refine)
    open_page(page, served)
    expect(page.locator("#refine")).to_be_visible()
    page.get_by_role("button", name="Use the bundled example").click()
    expect(page.locator("#seismic-cards li.card")).to_have_count(5, timeout=WAIT_MS)
    page.get_by_label("Method").select_option("fwi")
    page.get_by_label("Iterations").fill("3")
    page.get_by_role("button", name="Start refinement").click()
    expect(page.locator("#refine-status")).to_have_text("Refinement finished.", timeout=WAIT_MS)
    assert "method=fwi" in seen["url"] and "iterations=3" in seen["url"] and "start=top1" in seen["url"]
    assert seen["ctype"] == "application/x-npy" and seen["size"] > 1_000_000
    assert all(u.endswith("/refine/job-1") for u in polls) and len(polls) == 3
    expect(page.locator("#refine-compare canvas[role='img']")).to_have_count(2)
    expect(page.locator("#refine-start-caption")).to_contain_text("Top-1 retrieved model")
    expect(page.locator("#refine-descriptors")).to_contain_text("3250.0 m/s")
    expect(page.locator("#refine-fit tr.best-fit")).to_have_text("2. b0.120 (best fit)")
    with page.expect_download() as d:
        page.get_by_role("button", name="Download refined model (.npy)").click()
    np.testing.assert_array_equal(np.load(d.value.path())[0], refined.astype(np.float32))
    shot(page, "08-refine-ui")
    page.get_by_label("Method").select_option("check")  # no start model, no iterations: the server's own
    expect(page.get_by_label("Start model")).to_be_disabled()
    expect(page.get_by_label("Iterations")).to_be_disabled()
    page.get_by_role("button", name="Start refinement").click()
    expect(page.locator("#refine-status")).to_have_text("Refinement finished.", timeout=WAIT_MS)
    assert "method=check" in seen["url"] and "start=" not in seen["url"] and "iterations=" not in seen["url"]


def test_loading_state_while_a_query_is_in_flight(page: Page, served: Server) -> None:
    """While /retrieve is on its way the page says so, marks the results busy and turns the buttons off."""
    held: list = []
    open_page(page, served)
    page.route("**/retrieve?*", lambda route: held.append(route))  # hold the request until the checks are done
    page.get_by_role("button", name="Use the bundled example").click()
    status = page.locator("#seismic-status")
    expect(status).to_have_text(re.compile("Searching for the 5 nearest models"), timeout=WAIT_MS)
    expect(status).to_have_class(re.compile("loading"))
    expect(page.locator("#seismic-results")).to_have_attribute("aria-busy", "true")
    expect(page.get_by_role("button", name="Search")).to_be_disabled()
    expect(page.get_by_role("button", name="Use the bundled example")).to_be_disabled()
    shot(page, "00-loading")
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator("#seismic-cards li.card")).to_have_count(5, timeout=WAIT_MS)
    expect(page.locator("#seismic-results")).to_have_attribute("aria-busy", "false")
    expect(page.get_by_role("button", name="Search")).to_be_enabled()
