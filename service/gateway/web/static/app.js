// The page: pick a video and a model, run it (NDJSON, frame by frame), draw the answer over the
// playing video, prompt and correct stcn, download the result.

import { ApiError, api, segment, setApiKey } from "./api.js";
import { davisZip } from "./davis.js";
import { colourOf, drawShapes } from "./overlay.js";
import { decodeRle, encodeRle, maskArea } from "./rle.js";
import { frameIndexAt, mergeFrom, resultAt, ytvisResults } from "./results.js";

const $ = (id) => document.getElementById(id);
const video = $("video");
const overlay = $("overlay");
// The video's own size: masks, prompts and clicks are in its pixels. The overlay canvas has the
// size it is shown at (times the device's pixel ratio), so that labels stay sharp.
const frameSize = { width: 0, height: 0 };
const DEFAULT_FPS = 25; // only until an answer (or the sample list) tells the video's rate

const state = {
  models: new Map(), // name -> the entry of GET /v1/models
  samples: new Map(), // name -> the entry of GET /v1/samples
  video: null, // {blob, name, fps}: what is loaded and sent
  answer: null, // the result drawn (an stcn result has its corrections merged in)
  answerModel: null,
  detections: null, // a per-frame result of this video, where a click picks a mask
  prompt: null, // {frame, masks: Map(object id -> row-major mask)}: edits not yet tracked
  objects: [1], // prompt object ids
  current: 1, // the object a click or the brush edits
  busy: false,
};

// ---------------------------------------------------------------- the page's state

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function status(text) {
  $("status").textContent = text;
}

// Runs an action of the user's; its failure is shown on the page in plain words.
function guarded(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (e) {
      showError(e instanceof ApiError ? e.message : `Something went wrong: ${e.message}`);
      status("");
    }
  };
}

function selectedModel() {
  return state.models.get($("model").value);
}

function fps() {
  return state.answer?.fps || state.detections?.fps || state.video?.fps || DEFAULT_FPS;
}

function frameCount() {
  if (state.answer) return state.answer.frames.at(-1).frame_index + 1;
  return video.duration ? Math.round(video.duration * fps()) : 0;
}

function setBusy(busy) {
  state.busy = busy;
  updateControls();
}

function updateControls() {
  const model = selectedModel();
  const prompted = Boolean(model?.takes_prompt);
  $("run").hidden = prompted;
  $("run").disabled = state.busy || !state.video || !model;
  $("prompt").hidden = !prompted;
  $("stage").classList.toggle("prompting", prompted);
  $("track").disabled = state.busy || !state.video || !state.prompt;
  $("dl-json").disabled = !state.answer;
  $("dl-ytvis").disabled = !state.answer;
  $("dl-davis").disabled = !state.answer || state.models.get(state.answerModel)?.task !== "vos";
  $("model-info").textContent = !model
    ? ""
    : prompted
      ? `${model.task}: follows the objects you mark`
      : `${model.task}: ${model.classes.join(", ")}`;
  // Frame numbers need the video's frame rate: an answer's, or the sample's.
  const rateKnown = Boolean(state.answer || state.detections || state.video?.fps);
  for (const id of ["prev", "next", "frame"]) $(id).disabled = !rateKnown;
  $("frame-count").textContent = !state.video
    ? ""
    : rateKnown
      ? `of ${frameCount() - 1}`
      : "(numbered after a run)";
  renderObjects();
}

async function loadLists() {
  const [models, samples] = await Promise.all([
    api("/v1/models").then((r) => r.json()),
    api("/v1/samples").then((r) => r.json()),
  ]);
  const chosen = $("model").value;
  state.models = new Map(models.models.map((m) => [m.name, m]));
  $("model").replaceChildren(...models.models.map((m) => new Option(m.name, m.name)));
  if (state.models.has(chosen)) $("model").value = chosen;
  state.samples = new Map(samples.samples.map((s) => [s.name, s]));
  const options = samples.samples.map((s) => new Option(`${s.name} (${s.description})`, s.name));
  $("sample").replaceChildren(new Option("choose…", ""), ...options);
  showError("");
  updateControls();
}

function setVideo(blob, name, videoFps = null) {
  if (video.src) URL.revokeObjectURL(video.src);
  state.video = { blob, name, fps: videoFps };
  state.answer = state.answerModel = state.detections = state.prompt = null;
  state.objects = [1];
  state.current = 1;
  $("prompt-info").textContent = "";
  $("progress").value = 0;
  status(`${name} loaded`);
  showError("");
  video.src = URL.createObjectURL(blob);
  updateControls();
}

async function loadSample() {
  const sample = state.samples.get($("sample").value);
  if (!sample) return;
  $("file").value = "";
  status(`loading ${sample.name}…`);
  const blob = await (await api(sample.url)).blob();
  setVideo(blob, `${sample.name}.mp4`, sample.fps);
}

function showAnswer(answer, model) {
  state.answer = answer;
  state.answerModel = model;
  if (!state.models.get(model)?.takes_prompt) state.detections = answer;
  $("progress").value = 1;
  const objects = answer.tracks.length || answer.frames.reduce((n, f) => n + f.objects.length, 0);
  status(`${model}: ${answer.frames.length} frames, ${objects} ${answer.tracks.length ? "tracks" : "objects"}`);
  updateControls();
  draw();
}

// Runs a model over the video with a progress bar; resolves to the answer.
async function runModel(model, fields = {}) {
  showError("");
  setBusy(true);
  $("progress").value = 0;
  status(`running ${model}…`);
  try {
    return await segment(state.video, { model, ...fields }, (frame) => {
      if (video.duration) $("progress").value = Math.min(1, (frame.time + 1 / fps()) / video.duration);
      status(`running ${model}: frame ${frame.frame_index}`);
    });
  } finally {
    setBusy(false);
  }
}

async function run() {
  const model = selectedModel().name;
  showAnswer(await runModel(model), model);
}

// ---------------------------------------------------------------- drawing

const decoded = new WeakMap(); // mask object of an answer -> its row-major mask

function maskOf(rle) {
  if (!decoded.has(rle)) decoded.set(rle, decodeRle(rle));
  return decoded.get(rle);
}

function currentIndex(t = video.currentTime) {
  return frameIndexAt(t, fps());
}

// What is drawn on frame `index`: the prompt being edited there, else the answer's objects.
function shapesAt(index) {
  if (state.prompt && state.prompt.frame === index) {
    return [...state.prompt.masks].map(([id, mask]) => ({ id, mask, text: `#${id} (prompt)` }));
  }
  const frame = state.answer && resultAt(state.answer.frames, index);
  if (!frame) return [];
  return frame.objects.map((obj, k) => {
    const actions = obj.actions.map((a) => `${a.label} ${a.score.toFixed(2)}`).join(", ");
    const id = obj.track_id ?? k;
    const name = obj.track_id === null ? obj.category : `#${obj.track_id} ${obj.category}`;
    const text = `${name} ${obj.score.toFixed(2)}${actions ? ` · ${actions}` : ""}`;
    return { id, mask: maskOf(obj.mask), box: obj.box, text };
  });
}

function draw(t = video.currentTime) {
  const index = currentIndex(t);
  if (document.activeElement !== $("frame")) $("frame").value = index;
  const { width: w, height: h } = frameSize;
  const shapes = shapesAt(index).filter((shape) => shape.mask.length === w * h);
  drawShapes(overlay, frameSize, shapes, {
    masks: $("show-masks").checked,
    labels: $("show-labels").checked,
  });
}

// Draw on every frame the video presents (requestVideoFrameCallback gives the presented frame's
// own time); else on time updates. A seek while paused presents a frame too.
function followVideo() {
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (_now, meta) => {
      draw(meta.mediaTime);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    video.addEventListener("timeupdate", () => draw());
  }
  video.addEventListener("seeked", () => draw());
  video.addEventListener("loadedmetadata", () => {
    frameSize.width = video.videoWidth;
    frameSize.height = video.videoHeight;
    updateControls();
    draw();
  });
  video.addEventListener("play", () => ($("play").textContent = "Pause"));
  video.addEventListener("pause", () => ($("play").textContent = "Play"));
  video.addEventListener("error", () => status("the browser cannot play this file"));
}

// Shows frame `index` (paused): the middle of its display time, away from either edge.
function seekFrame(index) {
  video.pause();
  const last = Math.max(0, frameCount() - 1);
  const clamped = Math.min(Math.max(0, index), last);
  video.currentTime = (clamped + 0.5) / fps();
}

// ---------------------------------------------------------------- prompts (stcn)

// The detections a click picks from: an earlier per-frame result of this video, else
// masktrack-instance (or another per-frame model) run now.
async function ensureDetections() {
  if (state.detections) return;
  const detector = ["masktrack-instance", "masktrack"].find((name) => state.models.has(name));
  if (!detector) throw new ApiError("No detection model is served: use the brush.");
  const answer = await runModel(detector);
  state.detections = answer;
  status(`${detector} found the objects: click one`);
}

// The prompt on frame `index`, started if it is new: every object's current mask on that frame
// (from the tracked result), so that a correction re-sends the objects it does not change.
function promptOn(index) {
  if (state.prompt?.frame === index) return state.prompt.masks;
  const masks = new Map();
  const tracked = state.models.get(state.answerModel)?.takes_prompt && state.answer;
  const frame = tracked && state.answer.frames.find((f) => f.frame_index === index);
  for (const obj of frame?.objects || []) {
    const mask = Uint8Array.from(maskOf(obj.mask));
    if (maskArea(mask)) masks.set(obj.track_id, mask);
  }
  state.prompt = { frame: index, masks };
  return masks;
}

function detectedAt(index, x, y) {
  const frame = state.detections && resultAt(state.detections.frames, index);
  const w = frameSize.width;
  const hits = (frame?.objects || []).filter((obj) => maskOf(obj.mask)[y * w + x]);
  if (!hits.length) return null;
  hits.sort((a, b) => b.score - a.score);
  return Uint8Array.from(maskOf(hits[0].mask));
}

function canvasPoint(event) {
  const rect = overlay.getBoundingClientRect();
  const { width: w, height: h } = frameSize;
  const x = Math.floor(((event.clientX - rect.left) * w) / rect.width);
  const y = Math.floor(((event.clientY - rect.top) * h) / rect.height);
  return [Math.min(Math.max(x, 0), w - 1), Math.min(Math.max(y, 0), h - 1)];
}

function paint(masks, [cx, cy]) {
  const { width: w, height: h } = frameSize;
  if (!masks.has(state.current)) masks.set(state.current, new Uint8Array(w * h));
  const mask = masks.get(state.current);
  const r = Number($("brush-size").value) / 2;
  for (let y = Math.max(0, Math.floor(cy - r)); y <= Math.min(h - 1, cy + r); y++) {
    for (let x = Math.max(0, Math.floor(cx - r)); x <= Math.min(w - 1, cx + r); x++) {
      if ((x - cx) ** 2 + (y - cy) ** 2 <= r * r) mask[y * w + x] = 1;
    }
  }
}

let brushDown = false;

async function onPointerDown(event) {
  if (!selectedModel()?.takes_prompt || !state.video || state.busy) return;
  const point = canvasPoint(event);
  video.pause();
  showError("");
  await ensureDetections();
  const index = currentIndex();
  const masks = promptOn(index);
  if (document.querySelector("input[name=tool]:checked").value === "brush") {
    brushDown = true;
    paint(masks, point);
  } else {
    const picked = detectedAt(index, ...point);
    if (!picked) {
      status("nothing detected there: paint the object with the brush");
      return;
    }
    masks.set(state.current, picked);
  }
  afterEdit();
}

function onPointerMove(event) {
  if (!brushDown || !state.prompt) return;
  paint(state.prompt.masks, canvasPoint(event));
  draw();
}

function afterEdit() {
  const { frame, masks } = state.prompt;
  const ids = [...masks.keys()].sort((a, b) => a - b).join(", ");
  $("prompt-info").textContent = `prompt on frame ${frame}: object${masks.size === 1 ? "" : "s"} ${ids}`;
  updateControls();
  draw();
}

async function track() {
  const { frame, masks } = state.prompt;
  const { width: w, height: h } = frameSize;
  const rles = {};
  for (const [id, mask] of masks) if (maskArea(mask)) rles[id] = encodeRle(mask, h, w);
  if (!Object.keys(rles).length) throw new ApiError("Mark an object first: click it or paint it.");
  const model = selectedModel().name;
  const answer = await runModel(model, { prompt_rle: JSON.stringify(rles), prompt_frame: frame });
  // A correction (an earlier tracked result): frames before the prompt keep that result.
  const earlier = state.models.get(state.answerModel)?.takes_prompt ? state.answer : null;
  state.prompt = null;
  $("prompt-info").textContent = `tracked from frame ${frame}`;
  showAnswer(earlier ? mergeFrom(earlier, answer, frame) : answer, model);
}

function renderObjects() {
  const ids = new Set(state.objects);
  for (const id of state.prompt?.masks.keys() || []) ids.add(id);
  state.objects = [...ids].sort((a, b) => a - b);
  const buttons = state.objects.map((id) => {
    const button = document.createElement("button");
    button.textContent = `object ${id}`;
    button.style.borderColor = `rgb(${colourOf(id).join(",")})`;
    button.classList.toggle("current", id === state.current);
    button.addEventListener("click", () => {
      state.current = id;
      renderObjects();
    });
    return wrap(button);
  });
  $("objects").replaceChildren(...buttons);
}

function wrap(element) {
  const item = document.createElement("li");
  item.append(element);
  return item;
}

// ---------------------------------------------------------------- downloads

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function baseName() {
  return `${state.video.name.replace(/\.[^.]*$/, "")}.${state.answerModel}`;
}

function jsonBlob(value) {
  return new Blob([JSON.stringify(value)], { type: "application/json" });
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("api-key").value = sessionStorage.getItem("vidserve-api-key") || "";
  setApiKey($("api-key").value);
  $("api-key").addEventListener("change", guarded(async () => {
    setApiKey($("api-key").value);
    sessionStorage.setItem("vidserve-api-key", $("api-key").value.trim());
    await loadLists();
  }));
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (!file) return;
    $("sample").value = "";
    setVideo(file, file.name);
  });
  $("sample").addEventListener("change", guarded(loadSample));
  $("model").addEventListener("change", () => updateControls());
  $("run").addEventListener("click", guarded(run));
  $("track").addEventListener("click", guarded(track));
  $("play").addEventListener("click", () => (video.paused ? video.play() : video.pause()));
  $("prev").addEventListener("click", () => seekFrame(currentIndex() - 1));
  $("next").addEventListener("click", () => seekFrame(currentIndex() + 1));
  $("frame").addEventListener("change", () => seekFrame(Number($("frame").value)));
  $("show-masks").addEventListener("change", () => draw());
  $("show-labels").addEventListener("change", () => draw());
  overlay.addEventListener("pointerdown", guarded(onPointerDown));
  overlay.addEventListener("pointermove", onPointerMove);
  window.addEventListener("pointerup", () => (brushDown = false));
  window.addEventListener("resize", () => draw());
  $("add-object").addEventListener("click", () => {
    state.current = Math.max(0, ...state.objects) + 1;
    state.objects.push(state.current);
    renderObjects();
  });
  $("clear-object").addEventListener("click", () => {
    if (!state.video) return;
    promptOn(currentIndex()).delete(state.current);
    afterEdit();
  });
  $("dl-json").addEventListener("click", () => download(jsonBlob(state.answer), `${baseName()}.json`));
  $("dl-ytvis").addEventListener("click", () => {
    const classes = state.models.get(state.answerModel)?.classes || [];
    download(jsonBlob(ytvisResults(state.answer, classes)), `${baseName()}.ytvis.json`);
  });
  $("dl-davis").addEventListener("click", guarded(async () => {
    download(await davisZip(state.answer), `${baseName()}.davis.zip`);
  }));
  followVideo();
}

wire();
guarded(loadLists)();
