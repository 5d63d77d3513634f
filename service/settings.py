"""Settings, read from environment variables prefixed VIDSERVE_ (e.g. VIDSERVE_PORT=9000).
Command-line options override them."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The checkpoints that ship with the project, so a fresh clone serves real masks.
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDSERVE_", extra="ignore")

    log_level: str = "info"

    # Where models come from, and what a request gets when it names none.
    checkpoint_store: Path = Field(SHIPPED_CHECKPOINTS, description="checkpoint store folder")
    default_model: str = "masktrack"
    models: str = Field(
        "",
        description="comma-separated checkpoint names a worker loads from the store (e.g. "
        "'masktrack,stcn'; a pipeline's head needs its first stage listed too); empty: all",
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda:N'")
    reload_poll_s: float = Field(2.0, description="how often the store is checked for new versions")
    plugins: str = Field(
        "",
        description="comma-separated Python modules imported at start: they register runner "
        "families and pipelines, or serve models of their own (a `runners()` function)",
    )

    # Gateways.
    host: str = "0.0.0.0"
    port: int = 8000
    grpc_port: int = 50051
    redis_url: str | None = None

    # Security: API keys and TLS (both ports).
    api_keys: str = Field(
        "",
        description="comma-separated API keys; when set, /v1 REST requests need "
        "`Authorization: Bearer <key>` or `X-API-Key: <key>` and gRPC calls the metadata "
        "`authorization: Bearer <key>` or `x-api-key` (empty: off)",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain): with tls_key_file, REST and gRPC use TLS"
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle: when set, clients must show a certificate it signed (mTLS)",
    )

    # Admission and limits.
    max_frames_in_flight: int = Field(64, ge=1, description="per gateway, over all sessions")
    session_window: int = Field(8, ge=1, description="frames of one session at a worker at once")
    retry_after_s: int = Field(1, ge=1)
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_video_frames: int = Field(3000, ge=1)
    max_width: int = Field(1920, ge=16)
    max_height: int = Field(1080, ge=16)
    body_timeout_s: float = Field(
        60.0, gt=0, description="longest wait for the next chunk of a REST request body (408)"
    )
    body_deadline_s: float = Field(
        600.0, gt=0, description="longest time a REST request body may take to arrive (408)"
    )

    # Long videos as jobs (POST /v1/jobs).
    job_ttl_s: float = Field(
        3600.0, gt=0, description="how long a job's result is kept after the job ends"
    )
    max_jobs_running: int = Field(2, ge=1, description="jobs one gateway runs at once")
    job_lease_s: float = Field(
        30.0,
        gt=0,
        description="with Redis: a job whose gateway's heartbeat lapsed is taken by another "
        "gateway once the job's queue entry has been idle this long",
    )

    # Worker batching and sessions.
    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32",
        description="the worker's forward passes: fp32, or autocast to fp16 (CUDA only: a CPU "
        "worker falls back to fp32 with a warning) or bf16 (CUDA or CPU)",
    )
    gateway_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="embedded server: the gateways' threads (event loop, decoding, encoding) run "
        "this much nicer than the worker's, so that on cores the model fills they yield to its "
        "threads (Linux; 0: off; 10 measured best: README, serving overhead)",
    )
    max_sessions: int = Field(256, ge=1)
    session_idle_s: float = Field(60.0, gt=0)
    drain_grace_s: float = Field(
        25.0,
        ge=0,
        description="on SIGTERM: how long open sessions (worker) and in-flight responses "
        "(gateway) may take to finish before the process stops",
    )
    worker_port: int | None = Field(
        None, ge=0, le=65535, description="a Redis worker's /healthz, /readyz, /metrics (off)"
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()


def api_keys(settings: Settings) -> list[str]:
    return [key.strip() for key in settings.api_keys.split(",") if key.strip()]


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
