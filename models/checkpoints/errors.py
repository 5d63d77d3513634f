"""The one error type the checkpoint code raises for a bad checkpoint."""

from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint on disk is corrupt, truncated, tampered with or does not match its manifest;
    the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
