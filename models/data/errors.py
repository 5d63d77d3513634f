"""The one error type every dataset reader raises."""

from pathlib import Path


class DatasetError(ValueError):
    """A dataset on disk is broken or inconsistent; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
