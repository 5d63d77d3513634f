// What the page does with an answer of POST /v1/segment: find the frame shown, merge a
// correction into it, and write it as YouTube-VIS results.

// The index of the video frame shown at media time t (seconds): frame i is shown from i / fps
// on; the slack absorbs the rounding of a frame's time.
export function frameIndexAt(t, fps) {
  return Math.max(0, Math.floor(t * fps + 1e-3));
}

// The result to draw for frame `index`: its own, else the last one before it (a video sent with
// a frame stride has results for every n-th frame only). `frames` are in frame order.
export function resultAt(frames, index) {
  let found = null;
  for (const frame of frames) {
    if (frame.frame_index > index) break;
    found = frame;
  }
  return found;
}

// A correction tracked from frame f: frames before f keep the earlier result, the rest are the
// new one's (the new request answers frames before f empty).
export function mergeFrom(earlier, later, f) {
  const before = earlier ? earlier.frames.filter((fr) => fr.frame_index < f) : [];
  const after = later.frames.filter((fr) => fr.frame_index >= f);
  const frames = [...before, ...after].sort((a, b) => a.frame_index - b.frame_index);
  return { ...later, frames, tracks: summarizeTracks(frames) };
}

// The tracks summary of service.schemas.summarize_tracks (models/data/track_votes.py), for a
// merged answer: score = mean frame score; category = majority vote, a tie to the larger summed
// score, then to the category seen first.
export function summarizeTracks(frames) {
  const votes = new Map();
  for (const frame of [...frames].sort((a, b) => a.frame_index - b.frame_index)) {
    for (const obj of frame.objects) {
      if (obj.track_id === null || obj.track_id === undefined) continue;
      if (!votes.has(obj.track_id)) {
        votes.set(obj.track_id, { first: frame.frame_index, last: 0, n: 0, sum: 0, cats: new Map() });
      }
      const v = votes.get(obj.track_id);
      v.last = frame.frame_index;
      v.n += 1;
      v.sum += obj.score;
      const c = v.cats.get(obj.category) || { n: 0, sum: 0 };
      v.cats.set(obj.category, { n: c.n + 1, sum: c.sum + obj.score });
    }
  }
  return [...votes.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([trackId, v]) => {
      let best = null;
      for (const [cat, c] of v.cats) {
        // Map order is first-seen order: a later category must be strictly better to win.
        if (best === null || c.n > best.n || (c.n === best.n && c.sum > best.sum)) {
          best = { cat, ...c };
        }
      }
      return {
        track_id: trackId,
        category: best.cat,
        score: v.sum / v.n,
        first_frame: v.first,
        last_frame: v.last,
        num_frames: v.n,
      };
    });
}

// YouTube-VIS results as service/writers/ytvis.py writes them: one entry per track (score and
// category of its summary), `segmentations` one RLE per frame of the answer, in frame order,
// null where the track is absent; an object without a track id is an entry of its own. Category
// ids are 1-based positions in the model's class list; a model without one (stcn's "object")
// numbers its categories in the order they are first seen.
export function ytvisResults(answer, classes, videoId = 1) {
  const ids = new Map(classes.map((name, k) => [name, k + 1]));
  const categoryId = (name) => {
    if (!ids.has(name)) ids.set(name, ids.size + 1);
    return ids.get(name);
  };
  const frames = [...answer.frames].sort((a, b) => a.frame_index - b.frame_index);
  const summaries = new Map(summarizeTracks(frames).map((t) => [t.track_id, t]));
  const entries = new Map();
  frames.forEach((frame, t) => {
    frame.objects.forEach((obj, k) => {
      const tracked = obj.track_id !== null && obj.track_id !== undefined;
      const key = tracked ? `track ${obj.track_id}` : `untracked ${t} ${k}`;
      if (!entries.has(key)) {
        const s = tracked ? summaries.get(obj.track_id) : obj;
        entries.set(key, { category: s.category, score: s.score, masks: new Map() });
      }
      entries.get(key).masks.set(t, obj.mask);
    });
  });
  return [...entries.values()].map((e) => ({
    video_id: videoId,
    category_id: categoryId(e.category),
    score: e.score,
    segmentations: frames.map((_, t) => e.masks.get(t) ?? null),
  }));
}
