"""The loss-along-a-line diagnostic (autostep.lines) and its CLI subcommand."""

import math

import pytest
import torch
from torch import nn

import autostep
from autostep import cli
from autostep.lines import loss_along_lines
from autostep.bench.tasks import digits_mlp


def lines(*args, seed=0, **kw):
    """loss_along_lines on the user's model; without one, on the digits MLP built here."""
    if not args:
        pb = digits_mlp(seed)
        args = (pb.model, pb.loss_fn, pb.train)
    return loss_along_lines(*args, seed=seed, **kw)


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


@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adam"])
def test_batchnorm_and_dropout_see_the_same_run_when_measured(optimizer):
    """The measurements restore weights, BatchNorm statistics and the generators exactly."""
    def run(at):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                              nn.Linear(8, 1))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(96, 5, generator=g), torch.randn(96, 1, generator=g)
        loss = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()  # noqa: E731
        res = loss_along_lines(model, loss, (x, y), optimizer=optimizer, lr=0.05, steps=6, at=at,
                               batch_size=16, grid=[-0.2, -0.1, 0.0, 0.1, 0.2])
        return res, model.state_dict(), torch.rand(1)

    measured, sd, draw = run([0, 2, 5])
    plain, sd0, draw0 = run([])
    assert len(measured.records) == 3 and measured.train_losses == plain.train_losses
    assert all(torch.equal(sd[k], sd0[k]) for k in sd0) and torch.equal(draw, draw0)


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


# ------------------------------------------------------------------ public surface (issue 12 item 7)
def test_module_is_an_attribute_of_the_package_and_the_function_has_its_own_name():
    import importlib

    pkg = importlib.reload(autostep)
    assert pkg.lines is importlib.import_module("autostep.lines")  # not AttributeError, not a function
    assert pkg.lines.loss_along_lines is pkg.loss_along_lines
    with pytest.warns(DeprecationWarning, match="loss_along_lines"):
        old = pkg.lines.lines  # the README's old spelling keeps working, with a warning
    assert old is pkg.loss_along_lines


def test_no_demo_fallback_and_no_file_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError):
        loss_along_lines()  # model, loss_fn and train are required: no built-in demo problem
    pb = digits_mlp(0)
    res = loss_along_lines(pb.model, pb.loss_fn, pb.train, steps=2, every=1,
                           grid=[-0.1, 0.0, 0.1])
    assert len(res.records) == 2 and res.png is None
    assert list(tmp_path.iterdir()) == []  # no lines.png written


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(steps=0), ValueError, "steps must be an integer >= 1"),
        (dict(every=0), ValueError, "every"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(lr=-1.0), ValueError, "lr must be > 0"),
        (dict(lr=float("nan")), ValueError, "lr must be"),
        (dict(large_batch=0), ValueError, "large_batch"),
        (dict(at=[99]), ValueError, "at must list"),
        (dict(grid=[0.0, 0.0, 0.1]), ValueError, "distinct"),
        (dict(train=(torch.zeros(3, 3),)), TypeError, "pair of tensors"),
        (dict(model="m"), TypeError, "nn.Module"),
    ],
)
def test_bad_arguments_raise_before_training(change, exc, match):
    pb = digits_mlp(0)
    kw = dict(model=pb.model, loss_fn=pb.loss_fn, train=pb.train, steps=3, out=None)
    kw.update(change)
    before = [p.detach().clone() for p in pb.model.parameters()]
    with pytest.raises(exc, match=match):
        loss_along_lines(**kw)
    assert all(torch.equal(a, b) for a, b in zip(before, pb.model.parameters()))


def test_meta_device_model_is_refused_clearly():
    m = nn.Linear(3, 1, device="meta")
    with pytest.raises(ValueError, match="'meta' device"):
        loss_along_lines(m, lambda mm, b: mm(b[0]).sum(), (torch.zeros(4, 3), torch.zeros(4)), steps=1)
