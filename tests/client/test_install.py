"""The client installs on its own: `pip install ./clients/python` into a fresh venv pulls no torch
(nor pycocotools, nor the service), and the package imports and works there."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"

# Run in the fresh venv: the package imports without torch, and its RLE and PNG code run.
SMOKE = """
import sys
import numpy as np
import vidserve_client
from vidserve_client import Client, Mask
mask = np.zeros((5, 7), bool)
mask[1:3, 2:6] = True
assert (Mask.from_numpy(mask).to_numpy() == mask).all()
Client("http://127.0.0.1:1", grpc_target="127.0.0.1:1").close()
heavy = sorted({"torch", "pycocotools", "cv2", "PIL", "service", "models"} & set(sys.modules))
assert not heavy, heavy
print("ok")
"""


def uv() -> str:
    path = shutil.which("uv")
    if path is None:
        pytest.skip("uv is not on PATH (pip install uv); CI has it")
    return path


def test_a_fresh_venv_gets_the_client_without_torch(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ}
    env.pop("VIRTUAL_ENV", None)  # uv would otherwise prefer the project's venv
    # The same interpreter as the tests (its packages are not visible in the new venv).
    run([uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], env)
    python = venv / "bin" / "python"
    run([uv(), "pip", "install", "--quiet", "--python", str(python), str(CLIENT)], env)
    assert run([str(python), "-c", SMOKE], env).strip().endswith("ok")
    listed = run([uv(), "pip", "list", "--python", str(python), "--format", "json"], env)
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "vidserve-client" in installed
    assert not installed & {"torch", "torchvision", "pycocotools", "vidserve", "supervision"}


def run(command: list[str], env: dict) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout
