// COCO run-length encoding in the browser: the compressed `counts` strings of pycocotools
// (rleFrString / rleToString in maskApi.c), so masks go to and from the API unchanged.
//
// A COCO RLE runs over the pixels in column-major order (down the first column, then the next),
// starting with a run of zeros. The page keeps masks row-major (as canvas ImageData is):
// decode and encode convert.

// Counts from the compressed string: groups of 5 bits in characters '0'.. (48 + 63), the 6th bit
// saying "more follows", the last group's 5th bit the sign; from the third count on, each is
// stored as the difference to the count two before.
export function stringToCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

export function countsToString(counts) {
  let s = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return s;
}

// {size: [h, w], counts: "<compressed>"} -> Uint8Array of h * w, row-major, 1 inside the mask.
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const mask = new Uint8Array(h * w);
  let pos = 0; // column-major position
  let value = 0;
  for (const run of stringToCounts(rle.counts)) {
    if (value) {
      for (let i = pos; i < pos + run; i++) {
        const x = Math.floor(i / h);
        const y = i - x * h;
        mask[y * w + x] = 1;
      }
    }
    pos += run;
    value ^= 1;
  }
  return mask;
}

// Row-major mask of h * w (non-zero inside) -> {size: [h, w], counts: "<compressed>"}.
export function encodeRle(mask, h, w) {
  const counts = [];
  let value = 0;
  let run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const inside = mask[y * w + x] ? 1 : 0;
      if (inside !== value) {
        counts.push(run);
        run = 0;
        value = inside;
      }
      run += 1;
    }
  }
  counts.push(run);
  return { size: [h, w], counts: countsToString(counts) };
}

export function maskArea(mask) {
  let area = 0;
  for (let i = 0; i < mask.length; i++) area += mask[i] ? 1 : 0;
  return area;
}
