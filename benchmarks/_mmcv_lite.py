"""What the MMDetection / MMAction2 reference children share: mmcv-lite ships no compiled ops
(mmcv._ext), yet mmdet and mmaction import mmcv.ops at import time. A stand-in module whose every
function raises lets the import succeed; the compared models call none of them (RoIAlign, which
the action models do call, is transcribed in benchmarks/_mmaction_child.py), and any call fails
loudly rather than silently. Imported by the children from this folder (their sys.path[0])."""

from __future__ import annotations

import sys
import types


def stub_compiled_ops() -> None:
    """mmcv._ext as a module whose every attribute is a function that raises when called."""

    def missing(name: str):
        if name.startswith("__"):  # module protocol (__file__, __path__, ...): not an op
            raise AttributeError(name)

        def fail(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name} called: compiled ops are not installed")

        return fail

    ext = types.ModuleType("mmcv._ext")
    ext.__getattr__ = missing  # type: ignore[attr-defined]
    sys.modules["mmcv._ext"] = ext
