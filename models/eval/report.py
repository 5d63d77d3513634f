"""The result every evaluator returns: ordered metric name -> value, as a table or as JSON."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

# COCO-style metrics use -1 for "no ground truth in this setting" (e.g. no large objects).
UNDEFINED = -1.0


@dataclass
class EvalResult:
    task: str
    metrics: dict[str, float]  # in display order; fractions in [0, 1]
    per_class: dict[str, float] = field(default_factory=dict)  # optional, e.g. AP per action

    def to_dict(self) -> dict:
        data = {"task": self.task, "metrics": dict(self.metrics)}
        if self.per_class:
            data["per_class"] = dict(self.per_class)
        return data

    def write_json(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self):
        from rich.table import Table

        table = Table(title=f"{self.task} evaluation")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in self.metrics.items():
            table.add_row(name, _format(value))
        return table

    def print(self) -> None:
        from rich.console import Console

        Console().print(self.table())


def _format(value: float) -> str:
    if value == UNDEFINED or math.isnan(value):
        return "n/a"
    return f"{value:.4f}"
