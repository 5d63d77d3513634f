"""A training run stopped and resumed follows the run that never stopped: the same learning
rate at every step (not only the same step count), and so the same weights."""

import contextlib

import pytest
import torch

from models.train.loop import (
    TrainRun,
    cosine_with_warmup,
    make_optimizer,
    prepare_run,
    run_loop,
    save_state,
)

STEPS = 40
BASE_LR = 1.0  # the figure: a base of 1.0 came back as 0.7625


class Crash(Exception):
    pass


def train(tmp_path, *, resume: bool, crash_at: int | None = None):
    """prepare_run + run_loop as a trainer calls them, on a tiny model. Returns (start step,
    {step: learning rate}, model)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    run = TrainRun(
        data=tmp_path,
        store=tmp_path / "store",
        name="m",
        work_dir=tmp_path / "work",
        iters=STEPS,
        lr=BASE_LR,
        resume=resume,
        show_progress=False,
    )
    cfg, optimizer, start = prepare_run(model, run)
    cfg.save_every = 5
    rates = {}
    step = start

    def loss_fn(batch):
        nonlocal step
        if step == crash_at:
            raise Crash
        rates[step] = optimizer.param_groups[0]["lr"]
        step += 1
        x, y = batch
        return {"mse": torch.nn.functional.mse_loss(model(x), y)}

    def batches(first):
        for s in range(first, STEPS):
            g = torch.Generator().manual_seed(s)
            yield torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)

    with contextlib.suppress(Crash):
        run_loop(model, optimizer, batches(start), loss_fn, cfg, start)
    return start, rates, model


def test_resume_follows_the_uninterrupted_learning_rates(tmp_path):
    _, expected, reference = train(tmp_path / "whole", resume=False)
    warmup = min(200, STEPS // 10 + 1)
    assert expected == pytest.approx(
        {s: BASE_LR * cosine_with_warmup(s, STEPS, warmup) for s in range(STEPS)}
    )

    folder = tmp_path / "stopped"
    start, before, _ = train(folder, resume=False, crash_at=13)  # last state saved at step 10
    assert sorted(before) == list(range(13))
    start, after, resumed = train(folder, resume=True)
    assert start == 10
    assert after == pytest.approx({s: expected[s] for s in range(10, STEPS)})
    for a, b in zip(resumed.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_resume_twice_does_not_compound(tmp_path):
    """Each stop saves the then-scheduled rate: stopping twice must not scale it twice."""
    _, expected, _ = train(tmp_path / "whole", resume=False)
    folder = tmp_path / "stopped"
    train(folder, resume=False, crash_at=12)  # saved at 10
    train(folder, resume=True, crash_at=27)  # saved at 25
    start, after, _ = train(folder, resume=True)
    assert start == 25
    assert after == pytest.approx({s: expected[s] for s in range(25, STEPS)})


def test_a_state_saved_without_the_base_rate_resumes_at_the_configured_one(tmp_path):
    """A state file written before the base was saved holds only the scheduled rate."""
    model = torch.nn.Linear(4, 2)
    run = TrainRun(data=tmp_path, store=tmp_path, name="m", work_dir=tmp_path, iters=STEPS)
    cfg, optimizer, _ = prepare_run(model, run)
    for group in optimizer.param_groups:
        group["lr"] = 0.25 * run.lr  # mid-schedule, and no initial_lr
    save_state(cfg.state_path, model, optimizer, 20)
    fresh = torch.nn.Linear(4, 2)
    _, resumed_optimizer, start = prepare_run(fresh, TrainRun(**{**run.__dict__, "resume": True}))
    assert start == 20
    assert [g["initial_lr"] for g in resumed_optimizer.param_groups] == [run.lr]
    assert make_optimizer(fresh, cfg).param_groups[0]["lr"] == run.lr
