"""Long videos as jobs (POST /v1/jobs): against the embedded `vidserve serve`, then through Redis
with gateways killed and restarted while a job is queued, running or done."""

import time
import uuid

import httpx
import pytest

from models.data.synthetic.export import generate_video
from models.data.synthetic.world import WorldConfig
from models.data.video import write_mp4
from service.queue.redis_streams import WORKERS_HASH
from tests.service.conftest import Server
from tests.service.test_redis import start_worker
from tests.service.test_rest import LOW, assert_same_frames, post

JOBS_DB = 12  # this module's database on the tests' redis-server
LEASE_S = "1.5"  # a dead gateway's job is re-taken quickly


def submit(server, video: bytes, data=None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/jobs", files={"video": ("v.mp4", video)}, data=data or {}, timeout=120
    )


def job_of(server, job_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30)


def wait_until(server, job_id: str, statuses=("done", "failed"), timeout=180) -> list[dict]:
    """Every view of the job seen while polling, until its status is one of `statuses`."""
    views = []
    deadline = time.monotonic() + timeout
    while not views or views[-1]["status"] not in statuses:
        assert time.monotonic() < deadline, f"job {job_id} still {views[-1]['status']}"
        response = job_of(server, job_id)
        assert response.status_code == 200, response.text
        views.append(response.json())
        time.sleep(0.1)
    return views


def accepted(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["url"] == f"/v1/jobs/{body['id']}"
    assert response.headers["location"] == body["url"]
    return body["id"]


def clip(path, frames: int, seed: int = 3):
    world = WorldConfig(width=160, height=120, frames=frames, fps=8, max_objects=3)
    write_mp4(path, generate_video(world, seed, 0).frames, world.fps)
    return path


# --- embedded ------------------------------------------------------------------------------------
def test_a_job_answers_what_segment_answers(server, video_file):
    data = video_file.read_bytes()
    job_id = accepted(submit(server, data, LOW))
    views = wait_until(server, job_id)
    done = views[-1]
    assert done["status"] == "done" and done["error"] is None, done
    assert done["model"] == "masktrack"
    assert done["frames_done"] == done["frames_total"] == 10
    progress = [v["frames_done"] for v in views]
    assert progress == sorted(progress), "progress never goes back"
    assert all(v["frames_done"] <= v["frames_total"] for v in views if v["frames_total"])
    assert done["created_at"] <= done["updated_at"] < done["expires_at"]
    direct = post(server, data, LOW)
    assert direct.status_code == 200
    expected = direct.json()
    ours = done["result"]
    for key in ("model", "model_version", "width", "height", "fps", "stages", "actions"):
        assert ours[key] == expected[key], key
    assert [(t["track_id"], t["category"], t["num_frames"]) for t in ours["tracks"]] == [
        (t["track_id"], t["category"], t["num_frames"]) for t in expected["tracks"]
    ]
    assert_same_frames(ours["frames"], expected["frames"])
    assert sum(len(f["objects"]) for f in expected["frames"]) > 0


def test_an_unknown_job_is_404(server):
    for response in (
        job_of(server, uuid.uuid4().hex),
        httpx.delete(f"{server.url}/v1/jobs/{uuid.uuid4().hex}"),
    ):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert "no job" in response.json()["detail"]


def test_metrics_count_job_requests_by_route_not_by_id(server):
    job_ids = [uuid.uuid4().hex for _ in range(3)]
    for job_id in job_ids:
        job_of(server, job_id)
    lines = server.metric("vidserve_requests_total")
    assert 'endpoint="/v1/jobs/{job_id}"' in lines
    assert not any(job_id in lines for job_id in job_ids)


@pytest.mark.parametrize(
    "video, data, status, words",
    [
        (b"hello, I am not a video\n" * 10, {}, 415, "not a video"),
        (None, {"model": "no-such-model"}, 404, "not served"),
        (None, {"score_threshold": "2"}, 400, "score_threshold"),
        (b"\0\0\0\x18ftypisom" + b"\0" * 200, {}, 422, "cannot be decoded"),
    ],
)
def test_bad_input_is_refused_at_submission(server, video_file, video, data, status, words):
    response = submit(server, video or video_file.read_bytes(), data)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"].lower()


def test_the_service_keeps_working_after_refused_jobs(server, video_file):
    submit(server, b"garbage" * 100)
    submit(server, video_file.read_bytes(), {"model": "no-such-model"})
    job_id = accepted(submit(server, video_file.read_bytes(), {**LOW, "max_frames": "3"}))
    done = wait_until(server, job_id)[-1]
    assert done["status"] == "done" and len(done["result"]["frames"]) == 3


def test_delete_cancels_a_job_then_deletes_it(server, tmp_path):
    job_id = accepted(submit(server, clip(tmp_path / "long.mp4", 40).read_bytes()))
    cancelled = httpx.delete(f"{server.url}/v1/jobs/{job_id}")
    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert body["status"] == "failed" and body["error"]["title"] == "Cancelled"
    assert body["result"] is None
    assert job_of(server, job_id).json()["status"] == "failed"
    assert httpx.delete(f"{server.url}/v1/jobs/{job_id}").status_code == 204
    assert job_of(server, job_id).status_code == 404


def test_the_docs_show_the_jobs_routes(server):
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    post_job = paths["/v1/jobs"]["post"]
    assert {"202", "400", "404", "413", "415", "422", "429"} <= set(post_job["responses"])
    assert "multipart/form-data" in post_job["requestBody"]["content"]
    assert {"200", "404"} <= set(paths["/v1/jobs/{job_id}"]["get"]["responses"])
    assert {"200", "204", "404"} <= set(paths["/v1/jobs/{job_id}"]["delete"]["responses"])
    # /v1/segment keeps its form.
    segment = paths["/v1/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "$ref" in segment["schema"] or "properties" in segment["schema"]


# --- Redis: a job outlives its gateway ----------------------------------------------------------
class Cluster:
    """A worker and one gateway at a time on the same Redis database."""

    def __init__(self, url: str, log):
        self.url, self.log = url, log
        self.gateway: Server | None = None

    def start_gateway(self) -> Server:
        self.gateway = Server(
            extra_args=["--redis-url", self.url],
            env={"VIDSERVE_JOB_LEASE_S": LEASE_S, "VIDSERVE_MAX_JOBS_RUNNING": "1"},
            log=self.log,
        )
        return self.gateway

    def kill_gateway(self) -> None:
        self.gateway.process.kill()  # SIGKILL: no drain, its heartbeat just stops
        self.gateway.process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_server):
    url = redis_server.url(JOBS_DB)
    client = redis_server.client(JOBS_DB)
    client.flushdb()  # the tests' own server's database
    log = open(tmp_path_factory.mktemp("logs") / "jobs-cluster.log", "w")  # noqa: SIM115
    worker = start_worker(url, log)
    cluster = Cluster(url, log)
    try:
        cluster.start_gateway()
        deadline = time.monotonic() + 120
        while not client.hkeys(WORKERS_HASH):
            assert time.monotonic() < deadline, "the worker did not come up"
            time.sleep(0.3)
        cluster.redis = client
        yield cluster
    finally:
        worker.kill()
        worker.wait()
        if cluster.gateway is not None:
            cluster.gateway.stop()
        log.close()


def stored_status(cluster, job_id: str) -> str:
    return cluster.redis.hget(f"vidserve:job:{job_id}", "status").decode()


def test_jobs_outlive_a_killed_gateway(cluster, video_file, tmp_path):
    """One gateway (one job at a time) holds a done job, a running one and a queued one; it is
    killed; the next gateway answers the done one and runs the other two to the end."""
    finished = accepted(submit(cluster.gateway, video_file.read_bytes(), LOW))
    result = wait_until(cluster.gateway, finished)[-1]
    assert result["status"] == "done"
    running = accepted(submit(cluster.gateway, clip(tmp_path / "r.mp4", 24).read_bytes(), LOW))
    wait_until(cluster.gateway, running, statuses=("running", "done", "failed"))
    queued = accepted(submit(cluster.gateway, clip(tmp_path / "q.mp4", 12, 5).read_bytes(), LOW))
    waiting = job_of(cluster.gateway, queued).json()
    assert (waiting["status"], waiting["frames_done"]) == ("queued", 0), "its one slot is taken"
    cluster.kill_gateway()
    assert stored_status(cluster, running) == "running", "killed mid-job"
    assert stored_status(cluster, queued) == "queued"

    cluster.start_gateway()
    again = job_of(cluster.gateway, finished)
    assert again.status_code == 200 and again.json() == result
    for job_id, frames in ((running, 24), (queued, 12)):
        done = wait_until(cluster.gateway, job_id)[-1]
        assert done["status"] == "done", done
        assert [f["frame_index"] for f in done["result"]["frames"]] == list(range(frames))
        assert done["frames_done"] == done["frames_total"] == frames
        assert sum(len(f["objects"]) for f in done["result"]["frames"]) > 0
        assert not cluster.redis.exists(f"vidserve:job:{job_id}:video"), "a done job's video goes"
        ttl = cluster.redis.ttl(f"vidserve:job:{job_id}")
        assert 0 < ttl <= 3600, "the result expires after VIDSERVE_JOB_TTL_S"


def test_cancelling_a_running_job_stops_its_runner(cluster, tmp_path):
    job_id = accepted(submit(cluster.gateway, clip(tmp_path / "c.mp4", 24).read_bytes(), LOW))
    wait_until(cluster.gateway, job_id, statuses=("running", "done", "failed"))
    cancelled = httpx.delete(f"{cluster.gateway.url}/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["error"]["title"] == "Cancelled"
    assert not cluster.redis.exists(f"vidserve:job:{job_id}:video")
    # The runner sees it at its next frame, closes the session and lets the queue entry go.
    deadline = time.monotonic() + 60
    while cluster.redis.xlen("vidserve:job:queue"):
        assert time.monotonic() < deadline, "the cancelled job's entry is still queued"
        time.sleep(0.2)
    view = job_of(cluster.gateway, job_id).json()
    assert (view["status"], view["result"]) == ("failed", None)


def test_a_draining_gateway_puts_its_running_job_back_in_the_queue(cluster, tmp_path):
    """SIGTERM: the gateway does not wait for a running job; the job is queued again at once,
    from the start, for another gateway. Last in the module: it stops the gateway."""
    job_id = accepted(submit(cluster.gateway, clip(tmp_path / "d.mp4", 24).read_bytes(), LOW))
    wait_until(cluster.gateway, job_id, statuses=("running", "done", "failed"))
    cluster.gateway.process.terminate()
    assert cluster.gateway.process.wait(timeout=60) == 0
    record = cluster.redis.hgetall(f"vidserve:job:{job_id}")
    assert (record[b"status"], record[b"frames_done"]) == (b"queued", b"0")
    entries = cluster.redis.xrange("vidserve:job:queue")
    assert [fields[b"id"].decode() for _, fields in entries] == [job_id], "queued, not pending"
    assert cluster.redis.exists(f"vidserve:job:{job_id}:video")
