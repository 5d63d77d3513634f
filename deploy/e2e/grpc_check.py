"""The gRPC half of deploy/e2e/run.sh: a StreamFrames session of a few frames against a running
gateway, checked for one FRAME result per frame, in order; ListModels too.

    uv run python deploy/e2e/grpc_check.py [--target localhost:50051] [--frames 4]

Exits 0 when every frame is answered, 1 otherwise; prints the model, its version and the count of
objects per frame.
"""

import argparse
import sys
import time

import cv2
import grpc
import numpy as np

from service.gateway.grpc_gen import vidserve_pb2 as pb
from service.gateway.grpc_gen import vidserve_pb2_grpc as pb_grpc


def frames(n: int, width: int = 320, height: int = 240) -> list[bytes]:
    out = []
    for i in range(n):
        image = np.full((height, width, 3), 90, np.uint8)
        x = 20 + 8 * i
        cv2.rectangle(image, (x, 60), (x + 70, 150), (40, 40, 220), -1)
        ok, jpeg = cv2.imencode(".jpg", image)
        assert ok
        out.append(jpeg.tobytes())
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--model", default="", help="empty: the service's default model")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    with grpc.insecure_channel(args.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.VideoSegmentationStub(channel)

        listed = stub.ListModels(pb.ListModelsRequest(), timeout=30)
        print("ListModels:", ", ".join(f"{m.name} {m.version}" for m in listed.models))

        images = frames(args.frames)

        def requests():
            yield pb.StreamRequest(config=pb.SessionConfig(model=args.model))
            for i, image in enumerate(images):
                yield pb.StreamRequest(frame=pb.ImageFrame(image=image, frame_index=i))

        start = time.monotonic()
        results = [
            r
            for r in stub.StreamFrames(requests(), timeout=args.timeout)
            if r.kind == pb.FrameResult.FRAME
        ]
        elapsed = time.monotonic() - start

    indices = [r.frame_index for r in results]
    for r in results:
        print(f"  frame {r.frame_index}: {len(r.objects)} objects, {r.model} {r.model_version}")
    print(f"StreamFrames: {len(results)} FRAME results for {args.frames} frames in {elapsed:.2f} s")
    if indices != list(range(args.frames)):
        print(f"FAIL: expected frames {list(range(args.frames))}, got {indices}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
