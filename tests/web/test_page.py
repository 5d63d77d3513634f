"""The web page in a real browser (Debian's chromium driven by Playwright) against a real
`vidserve serve`: a synthetic video whose ground truth we know is uploaded, a model run, and the
overlay the page draws over the paused video is compared, pixel by pixel in a screenshot, with the
objects' true masks; an stcn prompt is made by clicking an object and corrected on a later frame;
a bad upload shows the service's error; and the page asks nothing of any host but the service."""

import io
import json
import zipfile
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image

from models.data.davis import read_palette_png
from models.data.rle import encode_mask
from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4
from service.schemas import SegmentResponse
from service.writers.davis import id_map
from service.writers.ytvis import ytvis_results

WORLD = WorldConfig(width=320, height=240, frames=12, fps=8, max_objects=3)
SEED = 4243
# A screenshot pixel is under the overlay where masks on and off differ by more (the video is
# paused on one frame: nothing else changes between the two).
CHANGED = 8


@pytest.fixture(scope="module")
def truth():
    return generate_video(WORLD, SEED, 0)


@pytest.fixture(scope="module")
def video_path(tmp_path_factory, truth):
    path = tmp_path_factory.mktemp("web") / "shapes.mp4"
    write_mp4(path, truth.frames, WORLD.fps)
    return path


# ------------------------------------------------------------------------------ helpers


def choose(page, video_path, model: str) -> None:
    page.set_input_files("#file", str(video_path))
    page.select_option("#model", model)
    page.wait_for_function("document.getElementById('video').readyState >= 2")


def wait_answer(page, model: str) -> None:
    """Until the status says the model's answer is in (frames and tracks counted)."""
    page.wait_for_function(f"document.getElementById('status').textContent.startsWith('{model}:')")


def show_frame(page, index: int) -> None:
    page.fill("#frame", str(index))
    page.press("#frame", "Enter")
    page.wait_for_function(
        "(() => { const v = document.getElementById('video');"
        " return !v.seeking && v.readyState >= 2"
        f" && Math.floor(v.currentTime * {WORLD.fps}) === {index}; }})()"
    )


def screenshot(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator("#stage").screenshot())).convert("RGB"))


def overlay_pixels(page, index: int) -> np.ndarray:
    """(H, W) bool, in screenshot pixels: where the masks drawn on frame `index` change the
    picture (a screenshot with masks against one without, the video paused on the frame)."""
    show_frame(page, index)
    if page.is_checked("#show-labels"):
        page.uncheck("#show-labels")  # boxes and labels lie outside the objects: masks only
    page.check("#show-masks")
    with_masks = screenshot(page).astype(int)
    page.uncheck("#show-masks")
    without = screenshot(page).astype(int)
    page.check("#show-masks")
    return np.abs(with_masks - without).max(axis=2) > CHANGED


def to_shot(mask: np.ndarray, shape) -> np.ndarray:
    """A mask of the video's size at the screenshot's size (nearest pixel)."""
    ys = np.arange(shape[0]) * mask.shape[0] // shape[0]
    xs = np.arange(shape[1]) * mask.shape[1] // shape[1]
    return mask[np.ix_(ys, xs)]


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask dilated by a few pixels (a square), for edges blurred by scaling and encoding."""
    out = mask.copy()
    for dy in range(-pixels, pixels + 1):
        for dx in range(-pixels, pixels + 1):
            out |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


def coverage(drawn: np.ndarray, mask: np.ndarray) -> float:
    return float((drawn & mask).sum() / mask.sum())


def outside(drawn: np.ndarray, objects: np.ndarray) -> float:
    """The share of the drawn pixels that lie off every object (its edge blur forgiven)."""
    return float((drawn & ~grow(objects, 3)).sum() / max(drawn.sum(), 1))


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of a pixel deep inside the mask: the last left by repeated erosion."""
    core = mask.copy()
    while True:
        eroded = core & np.roll(core, 1, 0) & np.roll(core, -1, 0)
        eroded &= np.roll(core, 1, 1) & np.roll(core, -1, 1)
        if not eroded.any():
            break
        core = eroded
    ys, xs = np.nonzero(core)
    return int(xs[len(xs) // 2]), int(ys[len(ys) // 2])


def click_object(page, mask: np.ndarray) -> None:
    x, y = inner_point(mask)
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / mask.shape[1]
    page.locator("#overlay").click(position={"x": (x + 0.5) * scale, "y": (y + 0.5) * scale})


def download(page, button: str) -> bytes:
    with page.expect_download() as info:
        page.click(button)
    return open(info.value.path(), "rb").read()


def assert_local(requests: list[str], server) -> None:
    host = urlparse(server.url).netloc
    remote = [u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")]
    assert remote and all(urlparse(u).netloc == host for u in remote), requests


# ------------------------------------------------------------------------------ tests


def test_the_page_loads_from_the_service_alone(session, server):
    page = session.page
    page.wait_for_function("document.querySelectorAll('#sample option').length > 1")
    models = [o.get_attribute("value") for o in page.locator("#model option").all()]
    assert {"masktrack", "masktrack-instance", "stcn"} <= set(models)
    assert page.locator("a[href='/docs']").count() == 1
    assert page.is_hidden("#error")
    assert_local(session.requests, server)
    # The samples are real videos the browser plays.
    page.select_option("#sample", "shapes-a")
    page.wait_for_function("document.getElementById('video').readyState >= 2")
    assert page.evaluate("document.getElementById('video').videoWidth") == 320
    # A key typed into the page goes with every API request (this server needs none).
    with page.expect_request(lambda r: r.url.endswith("/v1/models")) as models_request:
        page.fill("#api-key", "key-123")
        page.press("#api-key", "Tab")
    assert models_request.value.headers.get("x-api-key") == "key-123"
    assert_local(session.requests, server)


def test_masks_are_drawn_over_the_objects(session, server, video_path, truth):
    page = session.page
    choose(page, video_path, "masktrack")
    page.click("#run")
    wait_answer(page, "masktrack")
    assert page.evaluate("document.getElementById('progress').value") == 1
    for index in (2, 9):
        drawn = overlay_pixels(page, index)
        objects = to_shot(truth.object_map[index] > 0, drawn.shape)
        # The two large objects (the small ones score under the threshold of the shipped model).
        for obj in largest_objects(truth.object_map[index], 2):
            assert coverage(drawn, to_shot(truth.object_map[index] == obj, drawn.shape)) > 0.9
        assert outside(drawn, objects) < 0.05
    # The downloads: the answer, and YouTube-VIS results as service/writers/ytvis.py writes them.
    answer = json.loads(download(page, "#dl-json"))
    assert len(answer["frames"]) == WORLD.frames and answer["model"] == "masktrack"
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    classes = next(m["classes"] for m in models if m["name"] == "masktrack")
    expected = ytvis_results(SegmentResponse.model_validate(answer), classes)
    assert json.loads(download(page, "#dl-ytvis")) == json.loads(json.dumps(expected))
    assert_local(session.requests, server)


def test_a_clicked_object_is_tracked_and_corrected(session, server, video_path, truth):
    page = session.page
    choose(page, video_path, "stcn")
    first, second = objects_on_both(truth, 0, 5)
    # Object 1: clicked on frame 0 (the page finds the objects with masktrack-instance first).
    click_object(page, truth.object_map[0] == first)
    page.wait_for_function("document.getElementById('prompt-info').textContent.includes('1')")
    page.click("#track")
    wait_answer(page, "stcn")
    drawn = overlay_pixels(page, 8)
    assert coverage(drawn, to_shot(truth.object_map[8] == first, drawn.shape)) > 0.8
    assert outside(drawn, to_shot(truth.object_map[8] == first, drawn.shape)) < 0.1
    # A correction on frame 5: a second object joins; tracked again from there.
    show_frame(page, 5)
    page.click("#add-object")
    click_object(page, truth.object_map[5] == second)
    page.wait_for_function("document.getElementById('prompt-info').textContent.includes('2')")
    page.click("#track")
    wait_answer(page, "stcn")
    before, after = overlay_pixels(page, 3), overlay_pixels(page, 8)
    assert coverage(before, to_shot(truth.object_map[3] == first, before.shape)) > 0.8
    assert coverage(before, to_shot(truth.object_map[3] == second, before.shape)) < 0.1
    for obj in (first, second):
        assert coverage(after, to_shot(truth.object_map[8] == obj, after.shape)) > 0.8
    # DAVIS PNGs from the answer held (the correction merged in): the service's id maps.
    answer = SegmentResponse.model_validate(json.loads(download(page, "#dl-json")))
    with zipfile.ZipFile(io.BytesIO(download(page, "#dl-davis"))) as archive:
        assert archive.namelist() == [f"{i:05d}.png" for i in range(WORLD.frames)]
        for frame in answer.frames:
            png = read_palette_png(io.BytesIO(archive.read(f"{frame.frame_index:05d}.png")))
            assert np.array_equal(png, id_map(frame, WORLD.height, WORLD.width))
    assert_local(session.requests, server)


def largest_objects(object_map: np.ndarray, count: int) -> list[int]:
    ids, areas = np.unique(object_map[object_map > 0], return_counts=True)
    return [int(i) for i in ids[np.argsort(-areas)][:count]]


def objects_on_both(truth, a: int, b: int) -> tuple[int, int]:
    """The two largest objects seen well on frames a and b (and between, as the test checks 3
    and 8)."""
    frames = (a, 3, b, 8)
    areas = {
        obj: min(int((truth.object_map[t] == obj).sum()) for t in frames)
        for obj in np.unique(truth.object_map[a])
        if obj
    }
    ranked = sorted(areas, key=areas.get, reverse=True)
    assert len(ranked) >= 2 and areas[ranked[1]] > 300, areas
    return int(ranked[0]), int(ranked[1])


def test_rle_in_the_page_is_pycocotools_rle(session):
    """Masks the page encodes (prompts) and decodes (answers) are COCO's compressed RLE: the
    same counts strings as pycocotools, both ways, column-major."""
    rng = np.random.default_rng(0)
    masks = [
        np.zeros((5, 7), bool),
        np.ones((6, 4), bool),
        rng.random((37, 53)) > 0.5,  # many short runs
        np.pad(np.ones((100, 150), bool), ((20, 120), (30, 140))),  # long runs (multi-char)
    ]
    for mask in masks:
        rle = encode_mask(mask)
        page_rle, decoded = session.page.evaluate(
            """async ([rows, rle]) => {
                const { encodeRle, decodeRle } = await import('/static/rle.js');
                const [h, w] = rle.size;
                return [encodeRle(Uint8Array.from(rows.flat()), h, w), Array.from(decodeRle(rle))];
            }""",
            [mask.astype(int).tolist(), rle],
        )
        assert page_rle == rle
        assert np.array_equal(np.array(decoded, bool).reshape(mask.shape), mask)


def test_a_bad_upload_shows_the_services_error(session, server, tmp_path):
    page = session.page
    notes = tmp_path / "notes.txt"
    notes.write_text("these are notes, not a video\n" * 20)
    page.set_input_files("#file", str(notes))
    page.select_option("#model", "masktrack")
    page.click("#run")
    page.wait_for_selector("#error", state="visible")
    text = page.text_content("#error")
    assert "not a video" in text.lower(), text
    assert_local(session.requests, server)
