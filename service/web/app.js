// The SeisBind web page: queries the service it is served by (same origin, same limits) and draws what comes
// back. No build step and nothing from another origin (docs/webpage.md).

import { NpyError, parseNpy, writeNpy } from "./npy.js";
import {
  SOURCE_CELLS, VELOCITY_RANGE, amplitudeClip, drawColorbar, drawMisfit, drawModel, drawShot,
} from "./plots.js";

const GATHER = [5, 1000, 70]; // shots, time samples, receivers
const MODEL = [70, 70]; // depth, lateral cells
const POLL_MS = 1000;
const READY_RETRY_MS = 5000;

/** The eight descriptors of the physics query: sensible ranges (the synthetic families') and defaults (medians). */
const DESCRIPTORS = [
  { name: "v_mean", label: "mean velocity", unit: "m/s", min: 1500, max: 4500, value: 2760 },
  { name: "v_std", label: "velocity standard deviation", unit: "m/s", min: 0, max: 1500, value: 650 },
  { name: "v_min", label: "minimum velocity", unit: "m/s", min: 1500, max: 4500, value: 1830 },
  { name: "v_max", label: "maximum velocity", unit: "m/s", min: 1500, max: 4500, value: 4040 },
  { name: "v_top", label: "velocity of the top 10 % of depth", unit: "m/s", min: 1500, max: 4500, value: 1880 },
  { name: "v_bottom", label: "velocity of the bottom 10 % of depth", unit: "m/s", min: 1500, max: 4500, value: 3780 },
  { name: "grad_z", label: "mean vertical gradient dv/dz", unit: "1/s", min: -10, max: 10, value: 2.7 },
  { name: "grad_x", label: "mean lateral gradient |dv/dx|", unit: "1/s", min: 0, max: 10, value: 0.8 },
];

const $ = (id) => document.getElementById(id);

const state = {
  ready: false,
  info: null,
  refine: false, // the server has POST /refine (from /openapi.json)
  query: null, // {name, buffer, contentType, parsed, note}
  gatherIndex: 0,
  seismic: null, // {retrieve, infer, inferError, query}
  physics: null, // {retrieve, request}
  refineJob: null,
  refineResult: null,
  readyTimer: null, // the pending /readyz check while not ready
};

// -- HTTP -----------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail, requestId) {
    super(status ? `${detail} (HTTP ${status}${requestId ? `, request id ${requestId}` : ""})` : detail);
    this.status = status;
    this.detail = detail;
  }
}

/** Call the API; resolves to {status, doc}, rejects with ApiError carrying the service's own words. */
async function api(method, path, { body, contentType, json } = {}) {
  const headers = {};
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  } else if (contentType) {
    headers["Content-Type"] = contentType;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  } catch (err) {
    throw new ApiError(0, `the server could not be reached (${err.message})`);
  }
  const text = await response.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch {
    doc = null;
  }
  if (!response.ok) {
    const detail = doc && typeof doc.detail === "string" ? doc.detail : (text.slice(0, 300) || response.statusText);
    if (response.status === 503) checkReady();
    throw new ApiError(response.status, detail, doc && doc.request_id);
  }
  return { status: response.status, doc };
}

// -- small helpers --------------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function showError(id, message) {
  $(id).textContent = message || "";
}

function fmt(value, unit) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  if (unit === "m/s") return value.toFixed(1);
  return Math.abs(value) >= 100 ? value.toFixed(1) : value.toFixed(3);
}

function unitOf(name) {
  const d = DESCRIPTORS.find((x) => x.name === name);
  return d ? d.unit : "";
}

function download(name, data, type) {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

function safeName(id) {
  return String(id).replace(/[^A-Za-z0-9._-]+/g, "_");
}

function flatModel(nested) {
  // [depth][lateral] nested lists -> Float32Array in C order
  const out = new Float32Array(MODEL[0] * MODEL[1]);
  nested.forEach((row, z) => row.forEach((v, x) => { out[z * MODEL[1] + x] = v; }));
  return out;
}

function isModel(nested) {
  return Array.isArray(nested) && nested.length === MODEL[0] && nested.every((r) => Array.isArray(r) && r.length === MODEL[1]);
}

/** One colour scale for a set of models: the nominal 1500-4500 m/s, widened to any value outside it. */
function sharedScale(models) {
  let [lo, hi] = VELOCITY_RANGE;
  for (const m of models) {
    for (const v of m) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  return [Math.floor(lo), Math.ceil(hi)];
}

function readK(id, errorId, what = "k: enter a whole number of models") {
  const raw = $(id).value.trim();
  const k = Number(raw);
  if (!raw || !Number.isInteger(k)) {
    showError(errorId, `${what} (got "${raw}")`);
    $(id).focus();
    return null;
  }
  return k;
}

// -- readiness and versions -----------------------------------------------------------------------------------

const QUERY_BUTTONS = ["search", "physics-search", "refine-start-button"];

function applyReadiness() {
  for (const id of QUERY_BUTTONS) $(id).disabled = !state.ready || document.body.dataset.busy === "1";
}

async function checkReady() {
  clearTimeout(state.readyTimer);
  state.readyTimer = null;
  let ready = false;
  let reason = "";
  try {
    const response = await fetch("/readyz", { credentials: "same-origin" });
    const doc = await response.json();
    ready = response.ok && doc.ready === true;
    reason = doc.reason || doc.detail || `HTTP ${response.status}`;
  } catch (err) {
    reason = `the server could not be reached (${err.message})`;
  }
  const was = state.ready;
  state.ready = ready;
  const banner = $("ready-banner");
  if (ready) {
    banner.hidden = true;
    banner.textContent = "";
    if (!was) loadInfo();
  } else {
    banner.hidden = false;
    banner.textContent = `The service is not ready: ${reason}. Queries are off until it is; checking again every ` +
      `${READY_RETRY_MS / 1000} s.`;
    clearTimeout(state.readyTimer); // one pending check at most, however many callers
    state.readyTimer = setTimeout(checkReady, READY_RETRY_MS);
  }
  document.body.dataset.ready = ready ? "1" : "0";
  applyReadiness();
}

async function loadInfo() {
  try {
    const { doc } = await api("GET", "/v1/info");
    state.info = doc;
    $("info-encoder").textContent = doc.encoder || "?";
    $("info-index").textContent = doc.index_version || "none loaded";
    $("info-count").textContent = `${doc.count}${doc.index_type ? ` (${doc.index_type} index)` : ""}`;
    const providers = Object.entries(doc.providers || {}).map(([k, v]) => `${k}: ${v.join(", ")}`);
    $("info-providers").textContent = providers.join("; ") || "?";
    const maxK = Math.max(1, Math.min(doc.limits?.max_k ?? 100, doc.count || (doc.limits?.max_k ?? 100)));
    for (const id of ["seismic-k", "physics-k"]) $(id).max = String(maxK);
  } catch (err) {
    $("info-encoder").textContent = `unavailable: ${err.message}`;
  }
}

async function detectRefine() {
  try {
    const { doc } = await api("GET", "/openapi.json");
    state.refine = Boolean(doc && doc.paths && doc.paths["/refine"] && doc.paths["/refine"].post);
  } catch {
    state.refine = false;
  }
  $("refine").hidden = !state.refine;
}

// -- busy state -----------------------------------------------------------------------------------------------

function setBusy(panel, message) {
  const busy = Boolean(message);
  document.body.dataset.busy = busy ? "1" : "0";
  const status = $(`${panel}-status`);
  status.textContent = message || "";
  status.classList.toggle("loading", busy);
  $(`${panel}-results`).setAttribute("aria-busy", busy ? "true" : "false");
  for (const b of document.querySelectorAll("main button")) {
    if (!QUERY_BUTTONS.includes(b.id)) b.disabled = busy;
  }
  applyReadiness();
}

// -- the query gather -----------------------------------------------------------------------------------------

function gatherCount(parsed) {
  const s = parsed.shape;
  if (s.length === 3 && s.every((d, i) => d === GATHER[i])) return 1;
  if (s.length === 4 && s.slice(1).every((d, i) => d === GATHER[i]) && s[0] >= 1) return s[0];
  return 0;
}

async function takeFile(file) {
  showError("gather-error", "");
  showError("example-error", "");
  const buffer = await file.arrayBuffer();
  await useGather(file.name, buffer);
}

async function useGather(name, buffer) {
  const segy = /\.(sgy|segy)$/i.test(name);
  const query = { name, buffer, contentType: segy ? "application/x-segy" : "application/x-npy", parsed: null, note: "" };
  if (segy) {
    query.note = "SEG-Y is mapped onto the standard geometry by the server; the page previews .npy gathers only.";
  } else {
    try {
      const parsed = parseNpy(buffer);
      if (gatherCount(parsed)) query.parsed = parsed;
      else query.note = `no preview: shape (${parsed.shape.join(", ")}) is not (5, 1000, 70) or (B, 5, 1000, 70)`;
    } catch (err) {
      query.note = `no preview: ${err instanceof NpyError ? err.message : String(err)}`;
    }
  }
  state.query = query;
  state.gatherIndex = 0;
  state.seismic = null; // the last results belonged to another file
  renderIngest(null);
  renderSeismic();
  $("file-name").textContent = `${name} (${(buffer.byteLength / 1e6).toFixed(2)} MB)`;
  renderShots();
  if (state.ready) await searchSeismic();
  else $("seismic-status").textContent = "The service is not ready; choose Search once it is.";
}

function renderShots() {
  const query = state.query;
  const figure = $("shots");
  const row = $("shot-row");
  row.replaceChildren();
  figure.hidden = !query;
  if (!query) return;
  const pick = $("gather-pick");
  const label = $("gather-pick-label");
  $("shot-clip-label").hidden = !query.parsed;
  if (!query.parsed) {
    $("shots-caption").textContent = query.note;
    label.hidden = true;
    return;
  }
  const count = gatherCount(query.parsed);
  label.hidden = count < 2;
  if (pick.options.length !== count) {
    pick.replaceChildren(...Array.from({ length: count }, (_, i) => el("option", { value: String(i), text: `${i + 1} of ${count}` })));
  }
  pick.value = String(state.gatherIndex);
  const [ns, nt, nr] = GATHER;
  const size = ns * nt * nr;
  const gather = query.parsed.data.subarray(state.gatherIndex * size, (state.gatherIndex + 1) * size);
  const clip = amplitudeClip(gather, Number($("shot-clip").value));
  $("shots-caption").textContent = `${query.name}: the five shots${count > 1 ? ` of gather ${state.gatherIndex + 1}` : ""} ` +
    `(${query.parsed.dtype}; blue negative, red positive, saturated beyond ±${clip.toPrecision(3)})`;
  for (let s = 0; s < ns; s += 1) {
    const canvas = el("canvas", {
      role: "img",
      "aria-label": `Shot ${s + 1} of ${ns}, source at ${SOURCE_CELLS[s] * 10} m: ${nt} ms of data on ${nr} receivers, ` +
        `time down and offset across, amplitudes clipped at ±${clip.toPrecision(3)}`,
    });
    drawShot(canvas, gather.subarray(s * nt * nr, (s + 1) * nt * nr), nt, nr, clip, SOURCE_CELLS[s]);
    row.append(el("figure", { class: "shot" }, canvas,
      el("figcaption", { text: `Shot ${s + 1} · source at ${SOURCE_CELLS[s] * 10} m` })));
  }
}

async function loadExample() {
  showError("example-error", "");
  showError("gather-error", "");
  try {
    const response = await fetch("/example/query.npy", { credentials: "same-origin" });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch { /* not JSON */ }
      throw new ApiError(response.status, detail);
    }
    await useGather("example query.npy", await response.arrayBuffer());
  } catch (err) {
    showError("example-error", err.message);
  }
}

// -- seismic search -------------------------------------------------------------------------------------------

async function searchSeismic() {
  showError("gather-error", "");
  const query = state.query;
  if (!query) {
    showError("gather-error", "Choose a gather file (or the bundled example) first.");
    $("gather-file").focus();
    return;
  }
  const k = readK("seismic-k", "gather-error");
  if (k === null) return;
  setBusy("seismic", `Searching for the ${k} nearest models…`);
  try {
    const options = { body: query.buffer, contentType: query.contentType };
    const { doc: retrieve } = await api("POST", `/retrieve?k=${k}&include_models=true`, options);
    let infer = null;
    let inferError = "";
    try {
      infer = (await api("POST", `/infer-descriptors?k=${k}`, options)).doc;
    } catch (err) {
      inferError = err.message;
    }
    state.seismic = { retrieve, infer, inferError, query: query.name };
    const n = retrieve.results.length;
    if (state.gatherIndex >= n) state.gatherIndex = 0;
    renderIngest(retrieve.ingest);
    renderSeismic();
    setBusy("seismic", "");
    $("seismic-status").textContent = `Found ${retrieve.results[state.gatherIndex]?.neighbors.length ?? 0} models for ` +
      `${query.name}${n > 1 ? ` (${n} gathers)` : ""}.`;
  } catch (err) {
    setBusy("seismic", "");
    state.seismic = null;
    renderIngest(null);
    renderSeismic();
    showError("gather-error", err.message);
  }
}

function renderIngest(ingest) {
  const box = $("ingest");
  const warnings = ingest && Array.isArray(ingest.warnings) ? ingest.warnings : [];
  const steps = ingest && Array.isArray(ingest.steps) ? ingest.steps : [];
  // warnings: {code, message} (or plain strings); steps: {name, params}
  const warning = (w) => (typeof w === "string" ? w : `${w.message || JSON.stringify(w)}${w.code ? ` [${w.code}]` : ""}`);
  const params = (p) => Object.entries(p || {}).map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`);
  const step = (s) => (typeof s === "string" ? s : [s.name || "step", ...params(s.params)].join(" · "));
  $("ingest-warnings").replaceChildren(...warnings.map((w) => el("li", { text: warning(w) })));
  $("ingest-steps").replaceChildren(...steps.map((s) => el("li", { text: step(s) })));
  $("ingest-steps-box").hidden = steps.length === 0;
  box.hidden = warnings.length === 0 && steps.length === 0;
  box.querySelector("h3").textContent = warnings.length ? `Ingest warnings (${warnings.length})` : "Ingest: no warnings";
}

function renderSeismic() {
  const s = state.seismic;
  $("seismic-empty").hidden = Boolean(s);
  $("seismic-body").hidden = !s;
  $("inferred").hidden = true;
  if (!s) return;
  const result = s.retrieve.results[state.gatherIndex];
  renderResults("seismic", s.retrieve, result);
  const inferred = s.infer && s.infer.results[state.gatherIndex];
  const box = $("inferred");
  box.hidden = false;
  const body = box.querySelector("tbody");
  if (!inferred) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: "4", text: `Descriptors could not be inferred: ${s.inferError}` })));
    $("use-inferred").hidden = true;
    return;
  }
  $("use-inferred").hidden = false;
  body.replaceChildren(...Object.entries(inferred.descriptors).map(([name, d]) => el("tr", { "data-name": name },
    el("th", { scope: "row", text: name }), el("td", { text: fmt(d.value, d.unit) }),
    el("td", { text: `± ${fmt(d.std, d.unit)}` }), el("td", { text: d.unit }))));
  const how = s.infer.method === "blend"
    ? `the ${inferred.neighbors.length} nearest models' ${s.infer.weighting} blended with the encoder's descriptor readout`
    : `the ${inferred.neighbors.length} nearest models (${s.infer.weighting} weighting)`;
  box.querySelector("h4").textContent = `Descriptors inferred from ${how}; ± the neighbours' spread`;
}

/** Draw one query's neighbours as cards, on one colour scale shared by every model shown. */
function renderResults(panel, response, result) {
  const neighbors = result ? result.neighbors : [];
  const models = neighbors.filter((n) => isModel(n.velocity_model)).map((n) => flatModel(n.velocity_model));
  const [lo, hi] = sharedScale(models);
  const meta = [`encoder ${response.encoder}`, `index ${response.index_version}`, `k = ${response.k}`];
  if (result && typeof result.confidence === "number") {
    meta.push(`confidence that the top-1 model is within 150 m/s: ${(100 * result.confidence).toFixed(0)} %`);
  }
  if (result && result.out_of_distribution === true) meta.push("⚠ the query looks unlike the training data");
  $(`${panel}-meta`).textContent = meta.join(" · ");
  const bar = $(`${panel}-colorbar`);
  bar.hidden = models.length === 0;
  if (models.length) {
    drawColorbar(bar, lo, hi);
    bar.setAttribute("aria-label", `Colour scale shared by the models below: ${lo} m/s (dark purple) to ${hi} m/s (yellow)`);
  }
  const cards = $(`${panel}-cards`);
  if (neighbors.length === 0) {
    cards.replaceChildren(el("li", { class: "empty", text: "The index returned no models for this query." }));
    return;
  }
  cards.replaceChildren(...neighbors.map((n) => card(panel, n, result, lo, hi)));
}

function card(panel, n, result, lo, hi) {
  const item = el("li", { class: "card", "data-rank": String(n.rank), "data-id": n.id });
  const title = el("h4", { class: "card-title" }, el("span", { class: "rank", text: `#${n.rank}` }), " ",
    el("span", { class: "model-id", text: n.id }));
  if (result && result.consensus_rank === n.rank && result.neighbors.length > 1) {
    title.append(" ", el("span", { class: "consensus", text: "consensus",
      title: "the model closest to all the matches shown: the single pick of least expected error among them" }));
  }
  item.append(title);
  item.append(el("p", { class: "score", "data-score": String(n.score), text: `score ${n.score.toFixed(4)}` }));
  const confidence = typeof n.confidence === "number" ? n.confidence
    : (n.rank === 1 && result && typeof result.confidence === "number" ? result.confidence : null);
  if (confidence !== null) {
    item.append(el("p", { class: "confidence", "data-confidence": String(confidence),
      text: `confidence ${(100 * confidence).toFixed(0)} %` }));
  }
  if (isModel(n.velocity_model)) {
    const values = flatModel(n.velocity_model);
    let vmin = Infinity;
    let vmax = -Infinity;
    for (const v of values) {
      vmin = Math.min(vmin, v);
      vmax = Math.max(vmax, v);
    }
    const canvas = el("canvas", {
      role: "img",
      "aria-label": `Velocity model ${n.id} (rank ${n.rank}): 700 m deep by 700 m wide, ${vmin.toFixed(0)} to ` +
        `${vmax.toFixed(0)} m/s on the shared colour scale`,
    });
    drawModel(canvas, values, MODEL[0], MODEL[1], lo, hi);
    item.append(canvas);
    const button = el("button", { type: "button", class: "small", text: "Download .npy",
      "aria-label": `Download model ${n.id} as .npy` });
    button.addEventListener("click", () => download(`${safeName(n.id)}.npy`, writeNpy(values, [1, ...MODEL]),
      "application/x-npy"));
    item.append(button);
  } else {
    item.append(el("p", { class: "hint", text: "(the response carries no velocity model)" }));
  }
  const table = el("table", { class: "descriptors" }, el("caption", { class: "visually-hidden", text: `Descriptors of ${n.id}` }));
  const body = el("tbody");
  for (const [name, value] of Object.entries(n.descriptors || {})) {
    body.append(el("tr", {}, el("th", { scope: "row", text: name }), el("td", { text: `${fmt(value, unitOf(name))} ${unitOf(name)}` })));
  }
  table.append(body);
  item.append(table);
  return item;
}

function downloadModels(panel) {
  const response = panel === "seismic" ? state.seismic?.retrieve : state.physics?.retrieve;
  const result = response && response.results[panel === "seismic" ? state.gatherIndex : 0];
  const models = (result ? result.neighbors : []).filter((n) => isModel(n.velocity_model));
  if (!models.length) return;
  const all = new Float32Array(models.length * MODEL[0] * MODEL[1]);
  models.forEach((n, i) => all.set(flatModel(n.velocity_model), i * MODEL[0] * MODEL[1]));
  download(`${panel}_top${models.length}_models.npy`, writeNpy(all, [models.length, 1, ...MODEL]), "application/x-npy");
}

function downloadJson(panel) {
  const doc = panel === "seismic"
    ? { query: state.seismic?.query, retrieve: state.seismic?.retrieve, infer_descriptors: state.seismic?.infer }
    : { query: state.physics?.request, retrieve: state.physics?.retrieve };
  download(`seisbind_${panel}_results.json`, JSON.stringify(doc, null, 1), "application/json");
}

// -- physics search -------------------------------------------------------------------------------------------

function buildDescriptorInputs() {
  const grid = $("descriptor-inputs");
  grid.replaceChildren(...DESCRIPTORS.map((d) => {
    const id = `d-${d.name}`;
    const input = el("input", { type: "number", id, name: d.name, min: String(d.min), max: String(d.max), step: "any",
      value: String(d.value), required: "", "aria-describedby": `${id}-hint` });
    return el("div", { class: "control-stack" },
      el("label", { for: id }, el("code", { text: d.name }), ` ${d.label} (${d.unit})`), input,
      el("span", { class: "range", id: `${id}-hint`, text: `${d.min} to ${d.max} ${d.unit}` }));
  }));
}

function resetDescriptors() {
  for (const d of DESCRIPTORS) $(`d-${d.name}`).value = String(d.value);
  showError("physics-error", "");
}

async function searchPhysics() {
  showError("physics-error", "");
  const descriptors = {};
  for (const d of DESCRIPTORS) {
    const input = $(`d-${d.name}`);
    const value = Number(input.value);
    if (input.value.trim() === "" || !Number.isFinite(value)) {
      showError("physics-error", `${d.name}: enter a number in ${d.unit}`);
      input.focus();
      return;
    }
    if (value < d.min || value > d.max) {
      showError("physics-error", `${d.name}: ${value} ${d.unit} is outside the sensible range ${d.min} to ${d.max} ${d.unit}`);
      input.focus();
      return;
    }
    descriptors[d.name] = value;
  }
  const k = readK("physics-k", "physics-error");
  if (k === null) return;
  const request = { descriptors, k, include_models: true };
  setBusy("physics", `Searching for the ${k} models that match…`);
  try {
    const { doc } = await api("POST", "/retrieve-by-descriptors", { json: request });
    state.physics = { retrieve: doc, request };
    renderPhysics();
    setBusy("physics", "");
    $("physics-status").textContent = `Found ${doc.results[0]?.neighbors.length ?? 0} matching models.`;
  } catch (err) {
    setBusy("physics", "");
    state.physics = null;
    renderPhysics();
    showError("physics-error", err.message);
  }
}

function renderPhysics() {
  const p = state.physics;
  $("physics-empty").hidden = Boolean(p);
  $("physics-body").hidden = !p;
  if (p) renderResults("physics", p.retrieve, p.retrieve.results[0]);
}

function useInferred() {
  const inferred = state.seismic?.infer?.results[state.gatherIndex];
  if (!inferred) return;
  for (const d of DESCRIPTORS) {
    const est = inferred.descriptors[d.name];
    if (est) $(`d-${d.name}`).value = String(Number(est.value.toPrecision(6)));
  }
  $("physics").scrollIntoView({ behavior: "smooth", block: "start" });
  $(`d-${DESCRIPTORS[0].name}`).focus();
}

// -- refinement (shown only when the server has POST /refine) ------------------------------------------------

function refineBody() {
  const query = state.query;
  if (query.parsed && gatherCount(query.parsed) > 1) { // refine the gather on screen only
    const size = GATHER[0] * GATHER[1] * GATHER[2];
    const one = Float32Array.from(query.parsed.data.subarray(state.gatherIndex * size, (state.gatherIndex + 1) * size));
    return { body: writeNpy(one, GATHER), contentType: "application/x-npy" };
  }
  return { body: query.buffer, contentType: query.contentType };
}

function syncRefineControls() {
  // A start model applies to method fwi only, iterations to the methods that run FWI.
  const method = $("refine-method").value;
  $("refine-start").disabled = method !== "fwi";
  $("refine-iterations").disabled = !(method === "fwi" || method === "both");
}

async function startRefine() {
  showError("refine-error", "");
  if (!state.query) {
    showError("refine-error", "Choose a gather file (or the bundled example) first.");
    return;
  }
  const k = readK("seismic-k", "refine-error");
  const iterations = readK("refine-iterations", "refine-error", "iterations: enter a whole number");
  if (k === null || iterations === null) return;
  const method = $("refine-method").value;
  const params = new URLSearchParams({ method, k: String(k) });
  if (method === "fwi") params.set("start", $("refine-start").value); // the other methods have their own start
  if (method === "fwi" || method === "both") params.set("iterations", String(iterations));
  $("refine-compare").hidden = true;
  $("refine-progress").hidden = false;
  $("refine-status").textContent = "Starting the refinement…";
  $("refine-bar").value = 0;
  try {
    const { doc } = await api("POST", `/refine?${params}`, refineBody());
    if (doc && doc.job_id) {
      state.refineJob = doc.job_id;
      $("refine-cancel").hidden = false;
      pollRefine(doc.job_id);
    } else if (doc && Array.isArray(doc.results) && doc.results.length) {
      finishRefine({ state: "succeeded", progress: 1, result: doc.results[0] });
    } else {
      throw new ApiError(0, "the refinement answer has neither a job id nor results");
    }
  } catch (err) {
    $("refine-progress").hidden = true;
    showError("refine-error", err.message);
  }
}

async function pollRefine(jobId) {
  if (state.refineJob !== jobId) return;
  let job;
  try {
    job = (await api("GET", `/refine/${encodeURIComponent(jobId)}`)).doc;
  } catch (err) {
    showError("refine-error", err.message);
    state.refineJob = null;
    $("refine-cancel").hidden = true;
    return;
  }
  const misfit = Array.isArray(job.misfit) ? job.misfit : [];
  const last = misfit.length ? misfit[misfit.length - 1] : null;
  $("refine-status").textContent = `${job.state}` + (job.iteration != null ? ` · iteration ${job.iteration}` : "") +
    (last != null ? ` · misfit ${Number(last).toPrecision(4)}` : "") +
    ` · ${(100 * (job.progress || 0)).toFixed(0)} %`;
  $("refine-bar").value = job.progress || 0;
  drawMisfit($("refine-misfit"), misfit);
  if (["succeeded", "failed", "cancelled"].includes(job.state)) {
    finishRefine(job);
    return;
  }
  setTimeout(() => pollRefine(jobId), POLL_MS);
}

function startModelFor(result) {
  // The model the refinement started from: given by the server, else its start ids among the shown results.
  const neighbors = state.seismic?.retrieve.results[state.gatherIndex]?.neighbors || [];
  for (const key of ["start_model", "start_velocity_model"]) {
    if (isModel(result[key])) return { values: flatModel(result[key]), caption: "Start model" };
  }
  const ids = Array.isArray(result.start_ids) ? result.start_ids : [];
  const found = neighbors.filter((n) => ids.includes(n.id) && isModel(n.velocity_model));
  if (found.length) {
    const mean = new Float32Array(MODEL[0] * MODEL[1]);
    for (const n of found) flatModel(n.velocity_model).forEach((v, i) => { mean[i] += v / found.length; });
    return { values: mean, caption: found.length === 1 ? `Start model: ${found[0].id}` : `Start model: mean of ${found.length} retrieved models` };
  }
  const top = neighbors.find((n) => isModel(n.velocity_model));
  return top ? { values: flatModel(top.velocity_model), caption: `Top-1 retrieved model (${top.id}), for comparison` } : null;
}

function showNeighbourFit(result) {
  // How well each retrieved model's simulated data fit the gather (FWI jobs report it); the best one is marked.
  const table = $("refine-fit");
  const misfits = Array.isArray(result.neighbour_misfits) ? result.neighbour_misfits : [];
  const ids = Array.isArray(result.start_ids) ? result.start_ids : [];
  table.hidden = misfits.length === 0;
  table.querySelector("tbody").replaceChildren(...misfits.map((m, i) => {
    const best = i === result.best_fit_rank;
    return el("tr", { class: best ? "best-fit" : "" }, el("th", { scope: "row", text: `${i + 1}. ${ids[i] ?? "?"}` }),
      el("td", { text: Number(m).toPrecision(3) + (best ? " (best fit)" : "") }));
  }));
}

function finishRefine(job) {
  state.refineJob = null;
  $("refine-cancel").hidden = true;
  if (job.state !== "succeeded") {
    $("refine-status").textContent = `Refinement ${job.state}.`;
    if (job.error) showError("refine-error", job.error);
    return;
  }
  $("refine-status").textContent = "Refinement finished.";
  $("refine-bar").value = 1;
  const result = job.result || {};
  if (!isModel(result.velocity_model)) {
    showError("refine-error", "the refinement finished without a velocity model");
    return;
  }
  const refined = flatModel(result.velocity_model);
  state.refineResult = refined;
  const start = startModelFor(result);
  if (start && job.start === "bestfit" && Number.isInteger(result.best_fit_rank)) {
    start.caption = `Start model: best data fit (${(result.start_ids || [])[result.best_fit_rank] ?? "?"})`;
  }
  const [lo, hi] = sharedScale(start ? [refined, start.values] : [refined]);
  const startCanvas = $("refine-start-canvas");
  startCanvas.parentElement.hidden = !start;
  if (start) {
    drawModel(startCanvas, start.values, MODEL[0], MODEL[1], lo, hi);
    $("refine-start-caption").textContent = start.caption;
    startCanvas.setAttribute("aria-label", `${start.caption}, on the colour scale ${lo} to ${hi} m/s`);
  }
  const resultCanvas = $("refine-result-canvas");
  drawModel(resultCanvas, refined, MODEL[0], MODEL[1], lo, hi);
  resultCanvas.setAttribute("aria-label", `Refined velocity model, on the colour scale ${lo} to ${hi} m/s`);
  const body = $("refine-descriptors").querySelector("tbody");
  body.replaceChildren(...Object.entries(result.descriptors || {}).map(([name, v]) => el("tr", {},
    el("th", { scope: "row", text: name }), el("td", { text: `${fmt(v, unitOf(name))} ${unitOf(name)}` }))));
  showNeighbourFit(result);
  $("refine-compare").hidden = false;
}

async function cancelRefine() {
  const jobId = state.refineJob;
  if (!jobId) return;
  try {
    await api("DELETE", `/refine/${encodeURIComponent(jobId)}`);
  } catch (err) {
    showError("refine-error", err.message);
  }
}

// -- wiring ---------------------------------------------------------------------------------------------------

function wire() {
  buildDescriptorInputs();
  const input = $("gather-file");
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) takeFile(input.files[0]);
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) takeFile(file);
  });
  $("use-example").addEventListener("click", loadExample);
  $("shot-clip").addEventListener("change", renderShots);
  $("gather-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchSeismic();
  });
  $("gather-pick").addEventListener("change", () => {
    state.gatherIndex = Number($("gather-pick").value);
    renderShots();
    renderSeismic();
  });
  $("physics-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchPhysics();
  });
  $("physics-reset").addEventListener("click", resetDescriptors);
  $("use-inferred").addEventListener("click", useInferred);
  $("refine-form").addEventListener("submit", (e) => {
    e.preventDefault();
    startRefine();
  });
  $("refine-cancel").addEventListener("click", cancelRefine);
  $("refine-method").addEventListener("change", syncRefineControls);
  syncRefineControls();
  $("refine-download").addEventListener("click", () => {
    if (state.refineResult) download("refined_model.npy", writeNpy(state.refineResult, [1, ...MODEL]), "application/x-npy");
  });
  for (const panel of ["seismic", "physics"]) {
    $(`${panel}-download-json`).addEventListener("click", () => downloadJson(panel));
    $(`${panel}-download-models`).addEventListener("click", () => downloadModels(panel));
  }
}

async function main() {
  wire();
  applyReadiness();
  await Promise.all([checkReady(), loadInfo(), detectRefine()]);
  document.body.dataset.loaded = "1";
}

main();
