// Drawing a frame's objects on the canvas over the video: masks in the colour of their id, boxes,
// and labels (id, category, score, actions). Pure drawing: what to draw comes from app.js.

// Distinct colours, by object id; a mask is drawn at MASK_ALPHA over the video.
const COLOURS = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 128, 128], [170, 110, 40],
];
const MASK_ALPHA = 150;
const maskLayer = document.createElement("canvas");

export function colourOf(id) {
  return COLOURS[((id % COLOURS.length) + COLOURS.length) % COLOURS.length];
}

// shapes: [{id, mask (row-major, the video's size), box?, text}]. The canvas is sized to the
// size it is shown at (times the pixel ratio), so that labels stay sharp; drawing is in video
// pixels.
export function drawShapes(canvas, { width: w, height: h }, shapes, { masks, labels }) {
  const ctx = canvas.getContext("2d");
  const scale = fitCanvas(canvas) / (w || 1); // canvas px per video px
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  if (masks && shapes.length) {
    maskLayer.width = w;
    maskLayer.height = h;
    const layer = new ImageData(w, h);
    for (const { id, mask } of shapes) {
      const [r, g, b] = colourOf(id);
      for (let i = 0; i < mask.length; i++) {
        if (mask[i]) layer.data.set([r, g, b, MASK_ALPHA], i * 4);
      }
    }
    maskLayer.getContext("2d").putImageData(layer, 0, 0);
    ctx.imageSmoothingEnabled = false; // a mask's pixels stay square, as the model gave them
    ctx.drawImage(maskLayer, 0, 0);
  }
  if (labels) drawLabels(ctx, shapes, w, w / (canvas.clientWidth || w));
}

function fitCanvas(canvas) {
  const width = Math.round(canvas.clientWidth * devicePixelRatio);
  const height = Math.round(canvas.clientHeight * devicePixelRatio);
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  return width;
}

// Boxes and labels; `px` is one CSS pixel in video pixels.
function drawLabels(ctx, shapes, w, px) {
  ctx.font = `${12 * px}px system-ui, sans-serif`;
  ctx.lineWidth = 1.5 * px;
  for (const { id, mask, box, text } of shapes) {
    const [x1, y1, x2, y2] = box || boxOf(mask, w);
    if (x2 <= x1) continue;
    const colour = `rgb(${colourOf(id).join(",")})`;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const textHeight = 16 * px;
    const y = y1 >= textHeight ? y1 - textHeight : y2;
    ctx.fillStyle = colour;
    ctx.fillRect(x1, y, ctx.measureText(text).width + 6 * px, textHeight);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x1 + 3 * px, y + 12 * px);
  }
}

// [x1, y1, x2, y2] of a mask (a prompt has no box of its own).
function boxOf(mask, w) {
  let [x1, y1, x2, y2] = [Infinity, Infinity, -Infinity, -Infinity];
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    const x = i % w;
    const y = (i - x) / w;
    [x1, y1, x2, y2] = [Math.min(x1, x), Math.min(y1, y), Math.max(x2, x + 1), Math.max(y2, y + 1)];
  }
  return [x1, y1, x2, y2];
}
