"""A checkpoint whose hash is right but whose numbers are not is refused at load: NaN or inf
weights, and finite weights whose forward pass overflows (the family's probe on a probe frame).
The checkpoints are the shipped ones, altered and saved again with the project's own code."""

import math

import pytest
import torch
from torch import nn

from models.checkpoints import (
    CheckpointError,
    load_checkpoint,
    register_family,
    save_checkpoint,
    verify_checkpoint,
)
from models.checkpoints.store import CheckpointStore
from service.settings import SHIPPED_CHECKPOINTS

SHIPPED = CheckpointStore(SHIPPED_CHECKPOINTS)


def resave(family: str, name: str, out, alter) -> None:
    """The shipped checkpoint, altered by alter(model), saved as a new (hash-consistent) one."""
    loaded = SHIPPED.load(family, name)
    with torch.no_grad():
        alter(loaded.model)
    m = loaded.manifest
    save_checkpoint(
        loaded.model,
        out,
        family=m.family,
        architecture=m.architecture,
        class_names=m.class_names,
        version="altered",
    )


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("family, name", [("vis", "masktrack"), ("vos", "stcn")])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_weights_holding_nan_or_inf_are_refused(tmp_path, family, name, value):
    def poison(model):
        _, conv = first_conv(model)
        conv.weight[0, 0, 0, 0] = value

    resave(family, name, tmp_path / "c", poison)
    module_name, _ = first_conv(SHIPPED.load(family, name).model)
    for check in (load_checkpoint, verify_checkpoint):
        with pytest.raises(CheckpointError, match="NaN or inf") as caught:
            check(tmp_path / "c")
        assert f"{module_name}.weight" in str(caught.value)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        CheckpointStore(tmp_path / "store").add(tmp_path / "c", name)


@pytest.mark.parametrize("family, name", [("vis", "masktrack"), ("vos", "stcn")])
def test_finite_weights_that_overflow_are_refused_by_the_probe(tmp_path, family, name):
    def blow_up(model):
        _, conv = first_conv(model)
        conv.weight.mul_(1e38)  # finite (float32 max is 3.4e38); its output is not

    resave(family, name, tmp_path / "c", blow_up)
    verify_checkpoint(tmp_path / "c")  # the files themselves are fine
    with pytest.raises(CheckpointError, match="probe frame gives NaN or inf") as caught:
        load_checkpoint(tmp_path / "c")
    assert "model.safetensors" in str(caught.value)
    load_checkpoint(tmp_path / "c", probe=False)  # what probe=False skips


@pytest.mark.parametrize("family, name", [("vis", "masktrack"), ("vos", "stcn")])
def test_the_shipped_checkpoints_pass_their_probe(family, name):
    loaded = SHIPPED.load(family, name)
    assert not loaded.model.training


class Halver(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return self.linear(x) / 2


def test_a_family_probe_is_its_own(tmp_path):
    """A family registers its probe beside its builder; one without a probe is checked on its
    weights only."""
    calls = []

    def probe(model):
        calls.append(type(model).__name__)
        return model(torch.full((1, 3), 1e38))  # overflows on any non-trivial weights

    register_family("halver", lambda arch: Halver(**arch))
    model = Halver(3)
    save_checkpoint(
        model,
        tmp_path / "a",
        family="halver",
        architecture={"width": 3},
        class_names=[],
        version="1",
    )
    load_checkpoint(tmp_path / "a")  # no probe registered
    register_family("halver", lambda arch: Halver(**arch), probe=probe)
    with torch.no_grad():
        model.linear.weight.fill_(10.0)
    save_checkpoint(
        model,
        tmp_path / "b",
        family="halver",
        architecture={"width": 3},
        class_names=[],
        version="2",
    )
    with pytest.raises(CheckpointError, match="first in module 'linear'"):
        load_checkpoint(tmp_path / "b")
    assert calls == ["Halver"]
