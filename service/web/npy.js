// Reading and writing NumPy .npy files in the browser: little-endian float32/float64 arrays in C order
// (what numpy.save writes for the gathers and velocity models of this service). docs/formats.md has the layout.

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"

export class NpyError extends Error {}

/** Parse the header dictionary text of a .npy file: {descr, fortran_order, shape}. */
function parseHeader(text) {
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(text);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(text);
  const shape = /'shape'\s*:\s*\(([^)]*)\)/.exec(text);
  if (!descr || !fortran || !shape) {
    throw new NpyError("the .npy header is malformed (descr, fortran_order or shape missing)");
  }
  const dims = shape[1].split(",").map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (dims.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new NpyError(`the .npy shape (${shape[1]}) is not a tuple of sizes`);
  }
  return { descr: descr[1], fortranOrder: fortran[1] === "True", shape: dims };
}

/**
 * Parse .npy bytes into {shape, dtype, data}: data is a Float32Array (float32 files, no copy when aligned) or a
 * Float64Array (float64 files). Throws NpyError naming the problem for anything else.
 * @param {ArrayBuffer} buffer
 */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) {
    throw new NpyError("not a .npy file (the file does not start with the NumPy magic bytes)");
  }
  const major = bytes[6];
  const view = new DataView(buffer);
  let headerLen;
  let start;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new NpyError("the .npy header is cut short");
    headerLen = view.getUint32(8, true);
    start = 12;
  } else {
    throw new NpyError(`unsupported .npy format version ${major}`);
  }
  if (start + headerLen > bytes.length) throw new NpyError("the .npy header is cut short");
  const header = parseHeader(new TextDecoder("latin1").decode(bytes.subarray(start, start + headerLen)));
  const offset = start + headerLen;
  if (header.fortranOrder) throw new NpyError("Fortran-ordered .npy arrays are not supported; save in C order");
  const count = header.shape.reduce((a, b) => a * b, 1);
  let dtype;
  let size;
  if (header.descr === "<f4") {
    dtype = "float32";
    size = 4;
  } else if (header.descr === "<f8") {
    dtype = "float64";
    size = 8;
  } else {
    throw new NpyError(`dtype ${header.descr} is not supported: the page reads little-endian float32 (<f4) or ` +
      "float64 (<f8)");
  }
  if (bytes.length - offset !== count * size) {
    throw new NpyError(`the .npy data hold ${bytes.length - offset} bytes; shape (${header.shape.join(", ")}) ` +
      `of ${dtype} needs ${count * size}`);
  }
  const Typed = dtype === "float32" ? Float32Array : Float64Array;
  const data = offset % size === 0 ? new Typed(buffer, offset, count) : new Typed(buffer.slice(offset));
  return { shape: header.shape, dtype, data };
}

/**
 * Write a float32 array as .npy (format 1.0, little-endian, C order): an ArrayBuffer numpy.load reads.
 * @param {Float32Array} data
 * @param {number[]} shape
 */
export function writeNpy(data, shape) {
  const count = shape.reduce((a, b) => a * b, 1);
  if (data.length !== count) throw new NpyError(`${data.length} values do not fill shape (${shape.join(", ")})`);
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(", ");
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims}), }`;
  const total = 10 + header.length + 1; // magic, version, length, header, newline
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const out = new ArrayBuffer(10 + header.length + count * 4);
  const bytes = new Uint8Array(out);
  bytes.set(MAGIC, 0);
  bytes[6] = 1;
  bytes[7] = 0;
  new DataView(out).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i += 1) bytes[10 + i] = header.charCodeAt(i);
  const body = new DataView(out, 10 + header.length);
  for (let i = 0; i < count; i += 1) body.setFloat32(i * 4, data[i], true);
  return out;
}
