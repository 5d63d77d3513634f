"""VIDSERVE_GATEWAY_NICE: in the embedded server the gateways' threads run nicer than the
worker's, which keeps the priority it started with, and frames are still answered."""

import os
import sys
import threading
from pathlib import Path

import pytest

from service.app import lower_this_thread
from tests.service.conftest import Server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux nice values")


def nice_of(pid: int, tid: int) -> int:
    # /proc/<pid>/task/<tid>/stat: field 19 is the nice value (after the command in brackets).
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def test_a_lowered_thread_and_the_threads_it_starts_are_nicer_others_not():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen = {}

    def lowered():
        lower_this_thread(3)
        seen["self"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        child = threading.Thread(
            target=lambda: seen.update(child=os.getpriority(os.PRIO_PROCESS, 0))
        )
        child.start()
        child.join()

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen == {"self": min(19, base + 3), "child": min(19, base + 3)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    lower_this_thread(0)  # off: nothing changes
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_the_served_gateway_runs_nicer_than_the_worker(tmp_path):
    import httpx

    from models.data.synthetic.export import generate_video
    from models.data.synthetic.world import WorldConfig
    from models.data.video import write_mp4

    world = WorldConfig(width=160, height=120, frames=4, fps=4)
    video = tmp_path / "v.mp4"
    write_mp4(video, generate_video(world, 3, 0).frames, world.fps)
    server = Server(env={"VIDSERVE_GATEWAY_NICE": "4", "VIDSERVE_MODELS": "masktrack"})
    try:
        with video.open("rb") as file:
            answer = httpx.post(
                f"{server.url}/v1/segment", files={"video": ("v.mp4", file)}, timeout=120
            )
        assert answer.status_code == 200 and len(answer.json()["frames"]) == 4
        pid = server.process.pid
        nices = {int(t): nice_of(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task")}
        base = os.getpriority(os.PRIO_PROCESS, 0)  # the server started at this test's
        assert nices[pid] == min(19, base + 4)  # the event loop's thread
        assert base in nices.values()  # the worker's (and its torch threads) kept theirs
        assert sum(n == nices[pid] for n in nices.values()) >= 2  # gRPC's and the pool's too
    finally:
        server.stop()
