"""A small test video for deploy/e2e/run.sh: a few moving shapes on a plain background.

uv run python deploy/e2e/make_video.py OUT.mp4 [--frames 12] [--size 320x240]
"""

import argparse

import cv2
import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--frames", type=int, default=12)
parser.add_argument("--size", default="320x240")
args = parser.parse_args()
width, height = (int(v) for v in args.size.split("x"))

writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
if not writer.isOpened():
    raise SystemExit(f"cannot write {args.out}")
for i in range(args.frames):
    frame = np.full((height, width, 3), 90, np.uint8)
    x = 20 + 6 * i
    cv2.rectangle(frame, (x, 60), (x + 70, 150), (40, 40, 220), -1)
    cv2.circle(frame, (width - 60 - 4 * i, 170), 35, (220, 180, 30), -1)
    writer.write(frame)
writer.release()
print(f"wrote {args.out}: {args.frames} frames, {width}x{height}")
