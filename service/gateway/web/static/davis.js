// DAVIS 2017 results from the answer the page holds (so a corrected stcn result is saved as
// shown): one palette PNG a frame, pixel value = object id, named 00000.png, ..., in a zip; the
// files service/writers/davis.py writes. PNG and zip are written here (zlib by the browser's
// CompressionStream), the zip stored, as the service's is.

import { decodeRle } from "./rle.js";

// The DAVIS / PASCAL VOC palette (models/data/davis.py davis_palette).
function davisPalette() {
  const palette = new Uint8Array(256 * 3);
  for (let index = 0; index < 256; index++) {
    let r = 0;
    let g = 0;
    let b = 0;
    let c = index;
    for (let bit = 0; bit < 8; bit++) {
      r |= ((c >> 0) & 1) << (7 - bit);
      g |= ((c >> 1) & 1) << (7 - bit);
      b |= ((c >> 2) & 1) << (7 - bit);
      c >>= 3;
    }
    palette.set([r, g, b], index * 3);
  }
  return palette;
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes, crc = 0) {
  let c = crc ^ 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function u32be(n) {
  return new Uint8Array([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function pngChunk(type, data) {
  const typed = concat([new TextEncoder().encode(type), data]);
  return concat([u32be(data.length), typed, u32be(crc32(typed))]);
}

async function zlib(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// (h, w) object ids -> palette PNG bytes.
async function palettePng(ids, h, w) {
  const rows = new Uint8Array(h * (w + 1)); // each row: filter type 0, then its pixels
  for (let y = 0; y < h; y++) rows.set(ids.subarray(y * w, (y + 1) * w), y * (w + 1) + 1);
  const header = concat([u32be(w), u32be(h), new Uint8Array([8, 3, 0, 0, 0])]);
  return concat([
    new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]),
    pngChunk("IHDR", header),
    pngChunk("PLTE", davisPalette()),
    pngChunk("IDAT", await zlib(rows)),
    pngChunk("IEND", new Uint8Array(0)),
  ]);
}

function idMap(frame, h, w) {
  const ids = new Uint8Array(h * w);
  for (const obj of frame.objects) {
    if (!(obj.track_id >= 1 && obj.track_id <= 255)) {
      throw new Error(`object id ${obj.track_id} cannot be written to a DAVIS PNG (1..255)`);
    }
    const mask = decodeRle(obj.mask);
    for (let i = 0; i < mask.length; i++) if (mask[i]) ids[i] = obj.track_id;
  }
  return ids;
}

// A zip of stored (uncompressed) files: [{name, bytes}] -> Blob.
function storedZip(files) {
  const u16 = (n) => new Uint8Array([n & 255, (n >>> 8) & 255]);
  const u32 = (n) => new Uint8Array([n & 255, (n >>> 8) & 255, (n >>> 16) & 255, (n >>> 24) & 255]);
  const dosTime = u16(0);
  const dosDate = u16((2020 - 1980) << 9 | 1 << 5 | 1);
  const locals = [];
  const central = [];
  let offset = 0;
  for (const { name, bytes } of files) {
    const nameBytes = new TextEncoder().encode(name);
    const crc = u32(crc32(bytes));
    const sizes = [u32(bytes.length), u32(bytes.length)];
    const common = [u16(20), u16(0), u16(0), dosTime, dosDate, crc, ...sizes, u16(nameBytes.length), u16(0)];
    const local = concat([u32(0x04034b50), ...common, nameBytes, bytes]);
    central.push(
      concat([u32(0x02014b50), u16(20), ...common, u16(0), u16(0), u16(0), u32(0), u32(offset), nameBytes]),
    );
    locals.push(local);
    offset += local.length;
  }
  const directory = concat(central);
  const end = concat([
    u32(0x06054b50), u16(0), u16(0), u16(files.length), u16(files.length),
    u32(directory.length), u32(offset), u16(0),
  ]);
  return new Blob([...locals, directory, end], { type: "application/zip" });
}

export async function davisZip(answer) {
  const { height: h, width: w } = answer;
  const files = [];
  for (const frame of answer.frames) {
    const name = `${String(frame.frame_index).padStart(5, "0")}.png`;
    files.push({ name, bytes: await palettePng(idMap(frame, h, w), h, w) });
  }
  return storedZip(files);
}
