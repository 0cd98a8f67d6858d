"""MedDINOv3Core.train.step_losses: losses read back in windows, a non-finite one named by its step, and the training
loops that use it stop at a non-finite loss without writing a checkpoint of the damaged weights."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from MedDINOv3Core.train.step_losses import StepLosses


def _describe(step: int, name: str, value: float) -> str:
    return f"{name} is {value} at step {step}"


def test_a_window_is_read_in_one_piece_with_the_host_values():
    window = StepLosses(_describe)
    for step in range(3):
        window.add(step, {"b": torch.tensor(step * 2.0), "a": torch.tensor(0.5, requires_grad=True) * 2}, {"lr": 0.1})
    assert len(window) == 3
    rows = window.read()
    assert rows == [
        (0, {"a": 1.0, "b": 0.0, "lr": 0.1}),
        (1, {"a": 1.0, "b": 2.0, "lr": 0.1}),
        (2, {"a": 1.0, "b": 4.0, "lr": 0.1}),
    ]
    assert len(window) == 0 and window.read() == []


def test_the_reduction_runs_on_the_whole_table_before_the_check():
    window = StepLosses(_describe)
    window.add(7, {"loss": torch.tensor(1.0)})
    window.add(8, {"loss": torch.tensor(3.0)})
    seen = []

    def halve(table):
        seen.append(tuple(table.shape))
        table /= 2

    assert window.read(reduce=halve) == [(7, {"loss": 0.5}), (8, {"loss": 1.5})]
    assert seen == [(2, 1)]  # one collective for the window, not one per step


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_first_non_finite_step_is_named(bad):
    window = StepLosses(_describe)
    window.add(3, {"loss": torch.tensor(1.0)})
    window.add(4, {"loss": torch.tensor(bad)})
    window.add(5, {"loss": torch.tensor(math.nan)})
    with pytest.raises(FloatingPointError, match=f"loss is {bad} at step 4$"):
        window.read()


def test_steps_of_one_window_must_have_the_same_losses():
    window = StepLosses(_describe)
    window.add(0, {"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="step 1 has the losses"):
        window.add(1, {"b": torch.tensor(1.0)})


def _all_finite(state) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_all_finite(v) for v in state)
    return True


def test_finetuning_stops_at_a_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import MedDINOv3Core.train.finetune as finetune
    from MedDINOv3Core.train.checkpoint import load_checkpoint

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_finetune import tiny, write_phantom_dataset

    make_task = finetune.make_task

    class Poisoned:  # the real task, whose loss at step 5 (the second epoch) is NaN
        def __init__(self, *args, **kwargs):
            self._task = make_task(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._task, name)

        def __call__(self, step):
            loss = self._task(step)
            return loss * math.nan if step == 5 else loss

    monkeypatch.setattr(finetune, "make_task", Poisoned)
    data = write_phantom_dataset(tmp_path / "data", (0, 1), shape=(4, 40, 40), spacing=(6.0, 6.0, 20.0))
    config = tiny(tmp_path, data=str(data), epochs=2, iterations_per_epoch=4)
    with pytest.raises(FloatingPointError, match="the loss became nan at step 5; lower the learning rate"):
        finetune.run_finetuning(config)
    state = load_checkpoint(Path(config.output_dir) / "checkpoint.pt", what="finetuning checkpoint")
    assert int(state["epoch"]) == 1 and _all_finite(state["model"]) and _all_finite(state["optimizer"])


def test_pretraining_stops_at_a_non_finite_loss_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import MedDINOv3Core.train.pretrain as pretrain
    from MedDINOv3Core.train.checkpoint import load_checkpoint

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from data_fetch import write_synthetic_ct
    from test_pretrain import tiny_config

    weights, calls = pretrain.masked_patch_weights, []

    def poisoned(masks):  # one call per step: the iBOT weights of step 3 are NaN
        calls.append(True)
        w, n = weights(masks)
        return (w * math.nan, n) if len(calls) == 4 else (w, n)

    monkeypatch.setattr(pretrain, "masked_patch_weights", poisoned)
    config = tiny_config(tmp_path, write_synthetic_ct(tmp_path / "ct", n_volumes=2), checkpoint_every=2, log_every=5)
    with pytest.raises(FloatingPointError, match="pretraining loss ibot is nan at step 3"):
        pretrain.run_pretraining(config)
    state = load_checkpoint(Path(config.output_dir) / "checkpoints" / "last.pt")
    assert int(state["step"]) == 2 and _all_finite(state)
