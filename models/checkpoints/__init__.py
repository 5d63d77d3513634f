"""Checkpoints shared by every model family: safetensors weights + manifest.json, a store of
published versions, a family registry, and a weights-only reader for public .pth files."""

from models.checkpoints.checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    verify_checkpoint,
)
from models.checkpoints.convert import load_pth_state_dict
from models.checkpoints.errors import CheckpointError
from models.checkpoints.manifest import MANIFEST_FILE, WEIGHTS_FILE, Manifest
from models.checkpoints.registry import build_model, get_builder, register_family
from models.checkpoints.store import CheckpointStore

__all__ = [
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "CheckpointStore",
    "LoadedCheckpoint",
    "Manifest",
    "build_model",
    "get_builder",
    "load_checkpoint",
    "load_pth_state_dict",
    "read_manifest",
    "register_family",
    "save_checkpoint",
    "verify_checkpoint",
]
