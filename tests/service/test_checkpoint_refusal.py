"""Hot reload on a running embedded server meets checkpoints whose hash is right but which must
not serve: NaN weights are refused before they serve and the old version keeps answering; a
version refused while half-written is picked up once its files are complete."""

import math
import os
import shutil

import httpx
import pytest
import torch

from models.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from models.checkpoints.manifest import MANIFEST_FILE, WEIGHTS_FILE
from models.checkpoints.store import CheckpointStore
from service.settings import SHIPPED_CHECKPOINTS
from tests.service.conftest import MASKTRACK_ONLY, Server
from tests.service.test_hot_reload import served_version, wait_for

NAN_VERSION = "99990301T000000Z"  # sorts after any timestamp version
HALF_VERSION = "99990401T000000Z"  # and after that one
LOW = {"score_threshold": "0.05", "max_frames": "4"}


@pytest.fixture(scope="module")
def reloading(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    shutil.copytree(SHIPPED_CHECKPOINTS, store, dirs_exist_ok=True)
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    log = open(log_path, "w")  # noqa: SIM115
    server = Server(store=store, env={"VIDSERVE_RELOAD_POLL_S": "0.3", **MASKTRACK_ONLY}, log=log)
    yield server, store, log_path
    server.stop()
    log.close()


def publish(store, version: str, alter=None, where=None):
    """The served masktrack weights (altered by alter(model)) saved with the project's own code:
    as `version` into the store, or into the folder `where`."""
    source = CheckpointStore(SHIPPED_CHECKPOINTS).latest("vis", "masktrack")
    loaded = load_checkpoint(source)
    if alter is not None:
        with torch.no_grad():
            alter(loaded.model)
    m = loaded.manifest
    fields = dict(
        architecture=m.architecture,
        class_names=m.class_names,
        metrics=m.metrics,
        dataset_fingerprint=m.dataset_fingerprint,
        training=m.training,
    )
    if where is None:
        CheckpointStore(store).publish(
            loaded.model, family="vis", name="masktrack", version=version, **fields
        )
    else:
        save_checkpoint(loaded.model, where, family="vis", version=version, **fields)


def segment(server, video_file) -> dict:
    response = httpx.post(
        f"{server.url}/v1/segment",
        timeout=120,
        files={"video": ("v.mp4", video_file.read_bytes())},
        data=LOW,
    )
    assert response.status_code == 200, response.text
    return response.json()


def put(path, data: bytes) -> None:
    """Write a file in one step (a rename), so that the server sees it before or after."""
    part = path.parent / f".{path.name}.part"
    part.write_bytes(data)
    os.replace(part, path)


def test_nan_weights_are_refused_and_the_old_version_keeps_serving(reloading, video_file):
    server, store, log_path = reloading
    good = served_version(server)
    assert any(f["objects"] for f in segment(server, video_file)["frames"])

    def poison(model):  # as a diverged training run leaves them: NaN in one layer
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.weight.fill_(math.nan)

    publish(store, NAN_VERSION, poison)
    folder = store / "vis" / "masktrack" / NAN_VERSION
    wait_for(lambda: f"refused checkpoint {folder}" in log_path.read_text())
    assert "NaN or inf" in log_path.read_text()
    assert f"version {good} keeps serving" in log_path.read_text()
    assert served_version(server) == good
    answer = segment(server, video_file)
    assert answer["model_version"] == good
    assert any(f["objects"] for f in answer["frames"]), "the old version still finds objects"


def test_a_version_refused_while_half_written_is_served_once_complete(
    reloading, video_file, tmp_path
):
    server, store, log_path = reloading
    good = served_version(server)
    publish(store, HALF_VERSION, where=tmp_path / "complete")  # the whole checkpoint, elsewhere
    weights = (tmp_path / "complete" / WEIGHTS_FILE).read_bytes()
    folder = store / "vis" / "masktrack" / HALF_VERSION
    line = f"refused checkpoint {folder}"

    # A copy that does not publish atomically: the manifest first, no weights yet ...
    folder.mkdir()
    put(folder / MANIFEST_FILE, (tmp_path / "complete" / MANIFEST_FILE).read_bytes())
    wait_for(lambda: log_path.read_text().count(line) == 1)
    # ... then half of the weights ...
    put(folder / WEIGHTS_FILE, weights[: len(weights) // 2])
    wait_for(lambda: log_path.read_text().count(line) == 2)
    assert served_version(server) == good
    # ... then all of them: the version is tried again and served.
    put(folder / WEIGHTS_FILE, weights)
    wait_for(lambda: served_version(server) == HALF_VERSION)
    answer = segment(server, video_file)
    assert answer["model_version"] == HALF_VERSION
    assert any(f["objects"] for f in answer["frames"])
    assert log_path.read_text().count(line) == 2, "refused once per state of its files"
