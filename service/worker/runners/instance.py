"""Cascade Mask R-CNN in the worker: the detector per frame (any frame, any worker), batched
across sessions on the same DetectorForward as MaskTrack R-CNN's `<name>-instance`."""

from service.worker.runner import ModelRunner
from service.worker.runners import register_runners
from service.worker.runners.vis import DetectorForward, FrameDetectorRunner


def instance_runners(loaded, name: str) -> list[ModelRunner]:
    return [FrameDetectorRunner(DetectorForward(loaded.model, name), loaded.manifest, name)]


register_runners("instance", instance_runners)
