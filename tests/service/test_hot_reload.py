"""Hot reload on a running embedded server: a new checkpoint takes new sessions, open sessions
keep their version, a broken checkpoint is refused and the old version keeps serving."""

import asyncio
import json
import shutil
import time

import grpc
import httpx
import pytest

from models.checkpoints.checkpoint import load_checkpoint
from models.checkpoints.store import CheckpointStore
from models.data.video import read_video
from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc
from service.settings import SHIPPED_CHECKPOINTS
from tests.service.conftest import MASKTRACK_ONLY, Server
from tests.service.test_grpc import png

NEW_VERSION = "99990101T000000Z"  # sorts after any timestamp version
BROKEN_VERSION = "99990201T000000Z"


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


def served_version(server) -> str:
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    return next(m["version"] for m in models if m["name"] == "masktrack")


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_publish_during_a_stream(reloading, video_file):
    server, store, log_path = reloading
    frames, _ = read_video(video_file)
    old_version = served_version(server)

    async def scenario():
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.VideoSegmentationStub(channel)
            call = stub.StreamFrames()
            await call.write(pb.StreamRequest(config=pb.SessionConfig()))
            versions = []
            for index, frame in enumerate(frames):
                if index == 4:  # mid-stream: publish, and wait until new sessions get it
                    await asyncio.to_thread(publish_copy, store, NEW_VERSION)
                    await asyncio.to_thread(wait_for, lambda: served_version(server) == NEW_VERSION)
                await call.write(pb.StreamRequest(frame=pb.ImageFrame(image=png(frame))))
                versions.append((await call.read()).model_version)
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK
            return versions

    versions = asyncio.run(scenario())
    assert versions == [old_version] * len(frames), "the open stream kept its version"
    new = httpx.post(
        f"{server.url}/v1/segment",
        timeout=120,
        files={"video": ("v.mp4", video_file.read_bytes())},
        data={"max_frames": "2"},
    ).json()
    assert new["model_version"] == NEW_VERSION
    wait_for(lambda: f"freed masktrack version {old_version}" in log_path.read_text())


def test_broken_checkpoint_is_refused_and_the_old_one_serves(reloading, video_file):
    server, store, log_path = reloading
    good = served_version(server)
    source = store / "vis" / "masktrack" / good
    staging = store / "vis" / "masktrack" / f".staging-{BROKEN_VERSION}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = BROKEN_VERSION
    (staging / "manifest.json").write_text(json.dumps(manifest))
    weights = bytearray((staging / "model.safetensors").read_bytes())
    weights[-100] ^= 0xFF  # one flipped byte: the sha256 no longer matches
    (staging / "model.safetensors").write_bytes(bytes(weights))
    staging.rename(store / "vis" / "masktrack" / BROKEN_VERSION)
    wait_for(
        lambda: (
            f"refused checkpoint {store / 'vis' / 'masktrack' / BROKEN_VERSION}"
            in log_path.read_text()
        )
    )
    assert served_version(server) == good
    response = httpx.post(
        f"{server.url}/v1/segment",
        timeout=120,
        files={"video": ("v.mp4", video_file.read_bytes())},
        data={"max_frames": "2"},
    )
    assert response.status_code == 200 and response.json()["model_version"] == good


def publish_copy(store, version: str) -> None:
    """Publish the served weights again under a new version, as a trainer would."""
    folder = CheckpointStore(store).latest("vis", "masktrack")
    loaded = load_checkpoint(folder)
    m = loaded.manifest
    CheckpointStore(store).publish(
        loaded.model,
        family="vis",
        name="masktrack",
        version=version,
        architecture=m.architecture,
        class_names=m.class_names,
        metrics=m.metrics,
        dataset_fingerprint=m.dataset_fingerprint,
        training=m.training,
    )
