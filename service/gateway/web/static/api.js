// Talking to the service: fetch with the API key, problem+json turned into plain words, and
// POST /v1/segment read as NDJSON (fetch + ReadableStream) as its frames arrive.

const NDJSON = "application/x-ndjson";

export class ApiError extends Error {}

// What a status means, in words; the problem's detail follows.
const STATUS_WORDS = {
  400: "The request was not accepted",
  401: "The service needs a valid API key (enter it above)",
  404: "Not found",
  406: "Not available for this model",
  408: "The upload was too slow",
  413: "The video is too large",
  415: "This file is not a video",
  422: "The video could not be processed",
  429: "The service is busy",
  500: "The service failed",
  503: "The service cannot run this now",
};

export function plainWords(problem, retryAfter) {
  const words = STATUS_WORDS[problem.status] || problem.title || `Error ${problem.status}`;
  const detail = problem.detail ? `: ${problem.detail}` : "";
  const stop = /[.!?]$/.test(detail) ? "" : ".";
  const retry = retryAfter ? ` Try again in ${retryAfter} s.` : "";
  return `${words}${detail}${stop}${retry}`;
}

async function errorOf(response) {
  let problem = { status: response.status, title: response.statusText };
  try {
    problem = { ...problem, ...(await response.json()) };
  } catch {
    // not problem+json (a proxy's page): the status says enough
  }
  return new ApiError(plainWords(problem, response.headers.get("Retry-After")));
}

let apiKey = "";

// The key sent as X-API-Key with every request (none when empty).
export function setApiKey(key) {
  apiKey = key.trim();
}

function authHeaders() {
  return apiKey ? { "X-API-Key": apiKey } : {};
}

export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
  } catch (e) {
    throw new ApiError(`Cannot reach the service (${e.message}).`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

// POST /v1/segment as NDJSON: frames as they come (onFrame), then the summary. Resolves to the
// answer in the shape of the JSON response.
export async function segment(video, fields, onFrame) {
  const form = new FormData();
  form.append("video", video.blob, video.name);
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  const response = await api("/v1/segment", {
    method: "POST",
    body: form,
    headers: { Accept: NDJSON },
  });
  const frames = [];
  let summary = null;
  for await (const line of lines(response.body)) {
    const event = JSON.parse(line);
    if (event.frame) {
      frames.push(event.frame);
      onFrame(event.frame);
    } else if (event.actions) {
      addActions(frames, event.actions);
    } else if (event.summary) {
      summary = event.summary;
    } else if (event.error) {
      throw new ApiError(plainWords(event.error));
    }
  }
  if (!summary) throw new ApiError("The answer ended early (the connection was cut).");
  frames.sort((a, b) => a.frame_index - b.frame_index);
  const { tracks, stages, actions, ...head } = summary;
  return { ...head, frames, tracks, stages, actions };
}

async function* lines(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line) yield line;
    }
  }
  if (buffer.trim()) yield buffer.trim();
}

// An action head's labels for a key frame join the objects of that frame (as the JSON answer
// has them); they arrive after the frame itself.
function addActions(frames, result) {
  const frame = frames.find((f) => f.frame_index === result.key_frame);
  if (!frame) return;
  for (const track of result.tracks) {
    const obj = frame.objects.find((o) => o.track_id === track.track_id);
    if (!obj) continue;
    for (const label of track.actions) obj.actions.push({ key_frame: result.key_frame, ...label });
  }
}
