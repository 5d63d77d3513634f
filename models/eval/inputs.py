"""Reading the files an evaluator is given, with errors that name the file."""

import json
from pathlib import Path

from models.eval.errors import EvalInputError


def read_json(path: Path | str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalInputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise EvalInputError(f"{path}: is a folder, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalInputError(f"{path}: not valid JSON ({e})") from None
