"""The loss-along-a-line diagnostic (autostep.lines) and its CLI subcommand."""

import math

import pytest
import torch
from torch import nn

from autostep import cli
from autostep.lines import lines


class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))

    def forward(self, x):
        return x


def quad_loss(model, batch):
    x, _ = batch  # rows are centres c; loss = mean_c 0.5 * sum A (w - c)^2
    A = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    return (0.5 * A * (model.w - x) ** 2).sum(1).mean()


def test_quadratic_lines_are_exact_parabolas():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.zeros(40, dtype=torch.long)
    res = lines(Quadratic(), quad_loss, (x, y), optimizer="sgd", lr=0.1, steps=6, every=2,
                batch_size=8, out=None)
    assert [r.step for r in res.records] == [0, 2, 4]
    assert res.mean_abs_fit_error < 1e-10 and res.observation_1
    A = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    for r in res.records:
        assert r.direction == "update"
        # SGD: the step taken is lr * ||g||
        assert r.step_taken == pytest.approx(0.1 * r.grad_norm, rel=1e-9)
        assert r.err_batch < 1e-10
        a, b, _ = r.fit_full
        assert a > 0 and r.s_min_full == pytest.approx(-b / (2 * a))
    # the full-batch line minimum, checked in closed form for the first line
    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    r = res.records[0]
    gx = x[torch.randperm(40, generator=torch.Generator().manual_seed(0))[:8]]
    gb = (A * (w0 - gx)).mean(0)
    u = gb / gb.norm()
    s_star = float((u * A * (w0 - x.mean(0))).sum() / (u * A * u).sum())
    assert r.s_min_full == pytest.approx(s_star, rel=1e-8)


def test_digits_lines_do_not_change_the_run_and_save_png(tmp_path):
    out = tmp_path / "lines.png"
    res = lines(steps=12, every=4, out=str(out), seed=0)
    assert len(res.records) == 3 and out.exists() and out.stat().st_size > 1000
    assert math.isfinite(res.mean_abs_fit_error) and res.mean_abs_fit_error >= 0
    assert res.observation_1 == (res.mean_abs_fit_error < 0.006)
    ref = lines(steps=12, at=[], out=None, seed=0)
    assert res.train_losses == ref.train_losses  # measuring changed nothing
    assert "observation 1" in res.summary() and "s_min(full)" in res.table()


def test_labpal_approximation_calls_use_the_gradient_direction():
    res = lines(optimizer="labpal-nsgd", steps=3, every=1, out=None, large_batch=200)
    assert [r.direction for r in res.records] == ["gradient"] * 3
    assert all(r.step_taken == 0 for r in res.records)


def test_cli_subcommand(tmp_path, capsys):
    out = tmp_path / "cli.png"
    rc = cli.main(["lines", "--steps", "4", "--every", "2", "--grid=-0.2,0.2,9",
                   "--out", str(out)])
    assert rc == 0 and out.exists()
    text = capsys.readouterr().out
    assert "mean absolute parabola fit error" in text and "observation 1" in text
    with pytest.raises(ValueError, match="optimizer"):
        lines(optimizer="nope", steps=1, out=None)


def test_progress_bar_on_request(capsys):
    res = lines(steps=4, at=[1], grid=[-0.1, 0.0, 0.1], out=None, progress=True)
    assert len(res.records) == 1
    assert "lines" in capsys.readouterr().err
