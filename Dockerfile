# vidserve: one image for the gateway, the worker and the trainer; the command picks the role.
#
#   docker build -t vidserve .
#   docker run -p 8000:8000 -p 50051:50051 vidserve                        # embedded service
#   docker run -e VIDSERVE_WORKER_PORT=9100 vidserve vidserve worker --redis-url redis://redis:6379
#   docker run --no-healthcheck vidserve sh /app/deploy/train.sh --iters 500    # a training run
#
# A worker serves /healthz on VIDSERVE_WORKER_PORT, which the HEALTHCHECK polls: without it set,
# nothing listens and the container turns unhealthy. A training run is a job: no health to poll.
#
# Dependencies come from uv.lock only (`uv sync --frozen`). torch from PyPI carries its CUDA
# libraries as wheels (nvidia-*), so the image uses a GPU wherever the container runtime exposes
# one (NVIDIA Container Toolkit) and falls back to the CPU elsewhere; no CUDA base image needed.

# The same Python in both stages: the virtual environment links to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: the virtual environment, from the lock ---------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
# uv at the version that wrote uv.lock.
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Third-party packages first: this layer (gigabytes, with torch) is rebuilt only when the lock
# changes, not when the code does.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
# Then the project itself (a small layer), installed editable: the code lives in /app.
COPY README.md ./
COPY service/ service/
COPY models/ models/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev

# --- runtime: no uv, no build tools; the venv, the code, the shipped checkpoints ----------------
FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it and volumes can be
# prepared for it (fsGroup 10001). /checkpoints (the published store) and /data (datasets) are
# its own, so that a named volume mounted there starts out writable by it.
RUN groupadd --system --gid 10001 vidserve \
    && useradd --system --uid 10001 --gid vidserve --create-home --shell /usr/sbin/nologin \
        vidserve \
    && mkdir /checkpoints /data \
    && chown vidserve:vidserve /checkpoints /data
# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA runtime mounts into a container given a GPU (the
# CUDA base images set it; this image brings CUDA itself, through torch's wheels).
ENV PATH=/app/.venv/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIDSERVE_HOST=0.0.0.0 \
    VIDSERVE_PORT=8000 \
    VIDSERVE_GRPC_PORT=50051
WORKDIR /app
# Ordered from the least to the most often changed.
COPY --from=builder /app/.venv /app/.venv
COPY checkpoints/ checkpoints/
COPY deploy/healthcheck.py deploy/seed-checkpoints.sh deploy/train.sh deploy/
COPY models/ models/
COPY service/ service/
USER 10001:10001
EXPOSE 8000 50051 9100
# GET /healthz with urllib (no curl in the image): the gateway's on VIDSERVE_PORT, a worker's on
# VIDSERVE_WORKER_PORT when that is set.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
CMD ["vidserve", "serve"]
