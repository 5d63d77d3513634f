#!/bin/sh
# The trainer's entry (compose service `trainer`, Kubernetes Job `vidserve-train`): make a
# synthetic dataset (every format) unless TRAIN_DATA already holds one, train a family (MaskTrack
# R-CNN unless TRAIN_FAMILY says another), publish the checkpoint into the store the workers read
# and announce it on Redis, where the running workers pick it up. Arguments are passed on to
# `vidserve train $TRAIN_FAMILY` (e.g. --iters 500).
# With TRAIN_PROCESSES > 1 the training runs under torchrun, one process a GPU (NCCL; gloo on a
# host without GPUs), each on its share of every --batch-size batch (a multiple of the count).
#
#   TRAIN_FAMILY      vis, vos, instance or panoptic [vis]
#   TRAIN_DATA        dataset folder [/tmp/vidserve-train/data, made with `vidserve synth`]
#   TRAIN_VIDEOS, TRAIN_FRAMES, TRAIN_SIZE, TRAIN_SEED   the synthetic dataset [32, 24, 320x240, 100]
#   TRAIN_WORK_DIR    resumable training state [/tmp/vidserve-train/run]
#   TRAIN_PROCESSES   training processes on this host, one a GPU [1: plain, no torchrun]
#   VIDSERVE_CHECKPOINT_STORE   where to publish (required)
#   VIDSERVE_REDIS_URL          where to announce (optional: workers also poll the store)
set -eu

store="${VIDSERVE_CHECKPOINT_STORE:?set VIDSERVE_CHECKPOINT_STORE to the store the workers read}"
data="${TRAIN_DATA:-/tmp/vidserve-train/data}"
work_dir="${TRAIN_WORK_DIR:-/tmp/vidserve-train/run}"
family="${TRAIN_FAMILY:-vis}"

if [ ! -e "$data/meta.json" ] && [ ! -e "$data/train.json" ]; then
    vidserve synth --out "$data" \
        --videos "${TRAIN_VIDEOS:-32}" \
        --frames "${TRAIN_FRAMES:-24}" \
        --size "${TRAIN_SIZE:-320x240}" \
        --seed "${TRAIN_SEED:-100}"
fi

if [ -n "${VIDSERVE_REDIS_URL:-}" ]; then
    set -- --redis-url "$VIDSERVE_REDIS_URL" "$@"
fi
set -- --data "$data" --out "$store" --work-dir "$work_dir" "$@"

processes="${TRAIN_PROCESSES:-1}"
if [ "$processes" -gt 1 ]; then
    # --standalone: one host, a rendezvous of its own on a free port.
    exec torchrun --standalone --nproc-per-node "$processes" --no-python \
        vidserve train "$family" "$@"
fi
exec vidserve train "$family" "$@"
