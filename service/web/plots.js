// Canvas pictures: shot gathers (time in ms down, offset in m across), velocity models (depth and distance in m)
// on one shared m/s colour scale, its colour bar, and a misfit curve. Geometry as in docs/formats.md:
// 1 ms samples, receivers every 10 m, sources at lateral cells 0, 17, 34, 52, 69.

export const DT_MS = 1;
export const DX_M = 10;
export const SOURCE_CELLS = [0, 17, 34, 52, 69];
export const VELOCITY_RANGE = [1500, 4500]; // m/s, the models' nominal range: the default shared colour scale

const FONT = "11px system-ui, sans-serif";
const INK = "#1d2330";

function ramp(anchors) {
  // 256-entry RGB lookup table interpolated between [position, [r, g, b]] anchors.
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i += 1) {
    const t = i / 255;
    let j = 0;
    while (j < anchors.length - 2 && t > anchors[j + 1][0]) j += 1;
    const [t0, c0] = anchors[j];
    const [t1, c1] = anchors[j + 1];
    const f = t1 > t0 ? Math.min(1, Math.max(0, (t - t0) / (t1 - t0))) : 0;
    for (let k = 0; k < 3; k += 1) lut[i * 3 + k] = Math.round(c0[k] + f * (c1[k] - c0[k]));
  }
  return lut;
}

const SEISMIC = ramp([[0, [0, 0, 77]], [0.25, [0, 0, 255]], [0.5, [255, 255, 255]], [0.75, [255, 0, 0]],
  [1, [128, 0, 0]]]);
const VIRIDIS = ramp([[0, [68, 1, 84]], [0.125, [72, 40, 120]], [0.25, [62, 73, 137]], [0.375, [49, 104, 142]],
  [0.5, [38, 130, 142]], [0.625, [31, 158, 137]], [0.75, [53, 183, 121]], [0.875, [110, 206, 88]],
  [1, [253, 231, 37]]]);

/** Tick values between lo and hi, about n of them, at 1, 2 or 5 times a power of ten. */
export function niceTicks(lo, hi, n = 5) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(Math.round(v / step) * step);
  return out;
}

function setup(canvas, width, height) {
  // Size the canvas for the screen's pixel density; returns a context drawing in CSS pixels.
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, width, height);
  ctx.font = FONT;
  ctx.fillStyle = INK;
  ctx.strokeStyle = INK;
  return ctx;
}

function imageOf(values, rows, cols, lut, lo, hi) {
  // An offscreen canvas of rows x cols pixels coloured through lut on [lo, hi].
  const off = document.createElement("canvas");
  off.width = cols;
  off.height = rows;
  const octx = off.getContext("2d");
  const img = octx.createImageData(cols, rows);
  const scale = hi > lo ? 255 / (hi - lo) : 0;
  for (let i = 0; i < rows * cols; i += 1) {
    const c = Math.max(0, Math.min(255, Math.round((values[i] - lo) * scale))) * 3;
    img.data[i * 4] = lut[c];
    img.data[i * 4 + 1] = lut[c + 1];
    img.data[i * 4 + 2] = lut[c + 2];
    img.data[i * 4 + 3] = 255;
  }
  octx.putImageData(img, 0, 0);
  return off;
}

function axes(ctx, box, xRange, yRange, xLabel, yLabel) {
  // Frame, ticks and labels: x across the top (seismic convention), y down the left.
  const { x, y, w, h } = box;
  ctx.strokeRect(x - 0.5, y - 0.5, w + 1, h + 1);
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  for (const v of niceTicks(xRange[0], xRange[1], Math.max(2, Math.floor(w / 45)))) {
    const px = x + ((v - xRange[0]) / (xRange[1] - xRange[0])) * w;
    ctx.beginPath();
    ctx.moveTo(px, y - 4);
    ctx.lineTo(px, y);
    ctx.stroke();
    ctx.fillText(String(v), px, y - 5);
  }
  ctx.fillText(xLabel, x + w / 2, y - 17);
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of niceTicks(yRange[0], yRange[1], Math.max(2, Math.floor(h / 40)))) {
    const py = y + ((v - yRange[0]) / (yRange[1] - yRange[0])) * h;
    ctx.beginPath();
    ctx.moveTo(x - 4, py);
    ctx.lineTo(x, py);
    ctx.stroke();
    ctx.fillText(String(v), x - 6, py);
  }
  ctx.save();
  ctx.translate(11, y + h / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.fillText(yLabel, 0, 0);
  ctx.restore();
}

/** The amplitude that the colours saturate at: the q-th percentile (0-100) of |x| over a sample of the values. */
export function amplitudeClip(values, q = 99) {
  const stride = Math.max(1, Math.floor(values.length / 50000));
  const sample = [];
  for (let i = 0; i < values.length; i += stride) sample.push(Math.abs(values[i]));
  sample.sort((a, b) => a - b);
  return sample[Math.floor((q / 100) * (sample.length - 1))] || 1;
}

/**
 * Draw one shot: values [time][receiver] (nt x nr, C order), blue-white-red clipped at +-clip; time (ms) down,
 * offset from the source (m) across.
 */
export function drawShot(canvas, values, nt, nr, clip, sourceCell) {
  const box = { x: 50, y: 34, w: 2 * nr, h: 320 };
  const ctx = setup(canvas, box.x + box.w + 10, box.y + box.h + 8);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(imageOf(values, nt, nr, SEISMIC, -clip, clip), box.x, box.y, box.w, box.h);
  const x0 = -sourceCell * DX_M;
  axes(ctx, box, [x0, x0 + (nr - 1) * DX_M], [0, (nt - 1) * DT_MS], "offset (m)", "time (ms)");
}

/** Draw a velocity model [depth][lateral] (nz x nx, m/s) on the shared scale [lo, hi]; depth and distance in m. */
export function drawModel(canvas, values, nz, nx, lo, hi, cell = 3) {
  const box = { x: 50, y: 34, w: cell * nx, h: cell * nz };
  const ctx = setup(canvas, box.x + box.w + 10, box.y + box.h + 8);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(imageOf(values, nz, nx, VIRIDIS, lo, hi), box.x, box.y, box.w, box.h);
  axes(ctx, box, [0, (nx - 1) * DX_M], [0, (nz - 1) * DX_M], "distance (m)", "depth (m)");
}

/** Draw the colour bar of the shared velocity scale [lo, hi] (m/s). */
export function drawColorbar(canvas, lo, hi) {
  const box = { x: 14, y: 22, w: 360, h: 14 };
  const ctx = setup(canvas, box.x + box.w + 24, box.y + box.h + 20);
  const ramp256 = new Float32Array(256).map((_, i) => i);
  const off = imageOf(ramp256, 1, 256, VIRIDIS, 0, 255);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(off, box.x, box.y, box.w, box.h);
  ctx.strokeRect(box.x - 0.5, box.y - 0.5, box.w + 1, box.h + 1);
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const v of niceTicks(lo, hi, 6)) {
    const px = box.x + ((v - lo) / (hi - lo)) * box.w;
    ctx.beginPath();
    ctx.moveTo(px, box.y + box.h);
    ctx.lineTo(px, box.y + box.h + 4);
    ctx.stroke();
    ctx.fillText(String(v), px, box.y + box.h + 5);
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "bottom";
  ctx.fillText("velocity (m/s)", box.x, box.y - 4);
}

/** Draw a misfit curve over the iterations so far. */
export function drawMisfit(canvas, misfit) {
  const box = { x: 58, y: 12, w: 260, h: 90 };
  const ctx = setup(canvas, box.x + box.w + 12, box.y + box.h + 30);
  ctx.strokeRect(box.x - 0.5, box.y - 0.5, box.w + 1, box.h + 1);
  const values = misfit.filter((v) => Number.isFinite(v));
  if (values.length === 0) return;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi > lo ? hi - lo : 1;
  ctx.beginPath();
  values.forEach((v, i) => {
    const px = box.x + (values.length > 1 ? (i / (values.length - 1)) * box.w : box.w / 2);
    const py = box.y + box.h - ((v - lo) / span) * box.h;
    if (i === 0) ctx.moveTo(px, py);
    else ctx.lineTo(px, py);
  });
  ctx.strokeStyle = "#b3261e";
  ctx.stroke();
  ctx.fillStyle = INK;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText(hi.toPrecision(3), box.x - 4, box.y);
  ctx.fillText(lo.toPrecision(3), box.x - 4, box.y + box.h);
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.fillText(`iteration (${values.length} so far)`, box.x + box.w / 2, box.y + box.h + 6);
}
