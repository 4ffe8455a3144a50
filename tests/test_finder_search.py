"""The step-sampling search: reset trials, refinement, seeds, divergence, executors, CLI, plots."""

import math
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autostep.finder as F
from autostep.cli import main as cli_main
from autostep.finder.curve import analyze
from autostep.finder import TrialRunner, search_curve

from test_finder_curve import EXACT, f


# ----------------------------------------------------------------------------- a tiny problem
def tiny(seed=0, dropout=0.2, bn=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(192, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(192, 1, generator=g)
    torch.manual_seed(seed)
    layers = [nn.Linear(8, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(16, 1))
    model = nn.Sequential(*layers)
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=16, shuffle=True)
    val = [(x[128:], y[128:])]
    return model, train, val


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def sgd(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def adam(params, lr):
    return torch.optim.Adam(params, lr=lr)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_same(model, snap):
    now = model.state_dict(keep_vars=True)
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(now[k].detach(), v), k


# ----------------------------------------------------------------------------- reset
def test_two_trials_at_the_same_lr_are_bitwise_identical_and_restore_everything():
    model, train, val = tiny()
    before = snapshot(model)
    opts = []

    def make(params, lr):
        opts.append(torch.optim.Adam(params, lr=lr))
        return opts[-1]

    with TrialRunner(model, make, mse, train, val, steps=12) as runner:
        a = runner.run(1e-2)
        assert_same(model, before)
        b = runner.run(3e-1)
        assert_same(model, before)
        c = runner.run(1e-2)
        assert_same(model, before)
    assert a == c  # same loss, same steps, bit for bit (dropout, BN, shuffled loader replayed)
    assert a[0] != b[0]
    # every trial started from the same (fresh) optimizer state and evolved identically
    sa, sc = opts[0].state_dict(), opts[2].state_dict()
    for k in sa["state"]:
        for name, t in sa["state"][k].items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(sc["state"][k][name]))
    assert opts[0].state_dict()["state"][0]["step"] == 12


def test_trials_with_seeds_differ_by_data_order_but_replay_per_seed():
    model, train, val = tiny()
    batches = list(train)
    with TrialRunner(model, sgd, mse, batches, val, steps=6) as runner:
        s0, s1, s0b = runner.run(1e-2, seed=0), runner.run(1e-2, seed=1), runner.run(1e-2, seed=0)
    assert s0 == s0b
    assert s0[0] != s1[0]


def test_find_lr_leaves_model_grads_mode_and_rng_untouched():
    model, train, val = tiny()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads = [p.grad for p in model.parameters()]
    model.eval()
    before = snapshot(model)
    rng = torch.get_rng_state()
    r = F.find_lr(model, adam, mse, train, val, steps=5, lr_range=(1e-4, 1e-1), tol=0.25,
                  progress=False)
    assert_same(model, before)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(g, torch.full_like(g, 0.5)) for g in grads)
    assert torch.equal(torch.get_rng_state(), rng)
    assert r.window[0] <= r.lr <= r.window[1]


def test_model_restored_when_a_trial_raises():
    model, train, val = tiny()
    before = snapshot(model)
    rng = torch.get_rng_state()
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        if calls["n"] == 30:
            raise RuntimeError("boom in trial")
        return mse(model, batch)

    with pytest.raises(RuntimeError, match="boom"):
        F.find_lr(model, sgd, flaky, train, val, steps=5, progress=False)
    assert calls["n"] == 30
    assert_same(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- refinement
def synthetic(lrs):
    return [(f(math.log10(lr)),) for lr in lrs]


def test_refinement_converges_to_the_known_answers():
    errors = {}
    for tol in (0.125, 0.03):
        points, a, info = search_curve(synthetic, (1e-6, 1.0), tol=tol, smooth_decades=0.0)
        got = {"max_lr": a.x[a.i_min], "min_lr": a.x[a.i_knee], "half_drop": a.half_x,
               "steepest": a.x[a.i_steep]}
        errors[tol] = {k: abs(got[k] - EXACT[k]) for k in got}
        assert info["rounds"] >= 1
        assert errors[tol]["max_lr"] <= tol
        assert errors[tol]["half_drop"] <= tol
        assert errors[tol]["steepest"] <= 2 * tol
        assert errors[tol]["min_lr"] <= 2 * tol + 0.05
    # a tighter tolerance gets closer, and every POI's neighbours are within tol
    assert sum(errors[0.03].values()) < sum(errors[0.125].values())
    xs = sorted(points)
    for x in (a.x[a.i_min], a.x[a.i_knee], a.x[a.i_steep]):
        i = xs.index(round(x, 9))
        assert all(abs(xs[j] - xs[i]) <= 0.03 + 1e-9 for j in (i - 1, i + 1) if 0 <= j < len(xs))


def test_refinement_spends_far_fewer_points_than_a_fine_grid():
    points, a, _ = search_curve(synthetic, (1e-6, 1.0), tol=0.03, smooth_decades=0.0)
    assert len(points) < 50  # a 0.03-decade grid over 6 decades would need 200 points


def test_grid_is_extended_when_the_minimum_lands_on_an_edge():
    # the minimum (about 10**-1.8) is far right of the initial span: extend right
    points, a, info = search_curve(synthetic, (1e-6, 1e-4), tol=0.125, smooth_decades=0.0, max_extend=10)
    assert info["extended_right"] >= 4
    assert abs(a.x[a.i_min] - EXACT["max_lr"]) <= 0.125
    # the drop starts left of the span: extend left until the small-lr end is flat
    points, a, info = search_curve(synthetic, (10 ** -2.5, 1.0), tol=0.125, smooth_decades=0.0)
    assert info["extended_left"] >= 2
    assert min(points) <= -4.0
    assert abs(a.half_x - EXACT["half_drop"]) <= 0.125


def test_divergent_trials_end_the_coarse_grid_and_count_as_high_losses():
    seen = []

    def diverging(lrs):
        seen.extend(lrs)
        return [(math.inf,) if lr > 10 ** -1.2 else (f(math.log10(lr)),) for lr in lrs]

    points, a, info = search_curve(diverging, (1e-6, 100.0), tol=0.125, smooth_decades=0.0)
    # 0.1 and 0.316 diverge: the rest of the coarse grid (1 .. 100) is never trained
    assert info["skipped"] == 5
    assert max(seen) < 1.0
    assert math.isinf(points[-0.5][0]) and math.isinf(points[-1.0][0])
    assert all(math.isfinite(v) for v in a.y)
    assert abs(a.x[a.i_min] - EXACT["max_lr"]) <= 0.3


def test_find_lr_handles_real_divergence():
    model, train, val = tiny(dropout=0.0)
    r = F.find_lr(model, sgd, mse, train, val, steps=10, lr_range=(1e-4, 100.0), tol=0.25,
                  progress=False)
    div = [t for t in r.trials if t.diverged]
    assert div and all(math.isinf(t.val_loss) for t in div)
    assert all(t.steps < 10 for t in div)  # stopped early
    assert min(t.lr for t in div) > r.window[1]
    assert all(math.isfinite(v) for v in r.picks.values())
    assert r.info["skipped"] > 0
    assert r.steps_spent == sum(t.steps for t in r.trials)


def test_find_lr_result_fields_and_picks():
    model, train, val = tiny()
    r = F.find_lr(model, adam, mse, train, val, steps=8, progress=False, pick="half_drop")
    assert set(r.picks) == {"log_midpoint", "half_drop", "steepest"}
    assert r.lr == r.picks["half_drop"] and r.pick == "half_drop"
    lo, hi = r.window
    assert lo <= r.picks["steepest"] <= hi
    assert r.picks["log_midpoint"] == pytest.approx(math.sqrt(lo * hi))
    a = analyze(*zip(*sorted((t.lr, t.val_loss) for t in r.trials)), smooth_decades=0.15)
    assert a.window == pytest.approx(r.window)
    assert len({t.lr for t in r.trials}) == len(r.trials)  # no rate trained twice
    assert r.steps_spent == 8 * len(r.trials) - sum(8 - t.steps for t in r.trials)
    assert r.spread == {}
    assert "window" in r.summary()


def test_seeds_give_a_spread():
    model, train, val = tiny()
    r = F.find_lr(model, adam, mse, train, val, steps=6, seeds=3, lr_range=(1e-4, 1.0),
                  tol=0.25, progress=False)
    assert all(len(t.losses) == 3 for t in r.trials)
    assert set(r.spread) == set(r.picks)
    assert all(lo <= hi for lo, hi in r.spread.values())
    assert any(lo < hi for lo, hi in r.spread.values())
    assert r.info["seeds"] == [0, 1, 2]
    t = r.trials[0]
    assert t.val_loss == pytest.approx(sum(t.losses) / 3)
    assert r.steps_spent == sum(t.steps for t in r.trials) == 3 * 6 * len(r.trials) - sum(
        3 * 6 - t.steps for t in r.trials)


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(model="not a model"), TypeError, "nn.Module"),
        (dict(make_optimizer=None), TypeError, "make_optimizer"),
        (dict(make_optimizer=lambda p, lr: "sgd"), TypeError, "torch.optim.Optimizer"),
        (dict(loss_fn=lambda m, b: 1.0), TypeError, "loss.item"),
        (dict(loss_fn=lambda m, b: m(b[0]) - b[1]), TypeError, "scalar"),
        (dict(train_data=iter([1, 2])), TypeError, "one-shot iterator"),
        (dict(train_data=[]), ValueError, "no batch"),
        (dict(val_data=[]), ValueError, "val_data yielded no batch"),
        (dict(val_data=None), TypeError, "val_data"),
        (dict(steps=0), ValueError, "steps must be an integer >= 1"),
        (dict(steps=2.5), ValueError, "steps"),
        (dict(lr_range=(1.0, 1e-3)), ValueError, "increasing"),
        (dict(lr_range=(0.0, 1.0)), ValueError, r"lr_range\[0\]"),
        (dict(lr_range=5), ValueError, "pair"),
        (dict(pick="median"), ValueError, "pick must be one of"),
        (dict(seeds=0), ValueError, "seeds"),
        (dict(seeds=[1, 1]), ValueError, "distinct"),
        (dict(seeds="abc"), ValueError, "integers"),
        (dict(tol=-0.1), ValueError, "tol"),
        (dict(diverge=0.5), ValueError, "diverge"),
        (dict(smooth_decades=-1), ValueError, "smooth_decades"),
        (dict(executor=42), TypeError, "executor"),
    ],
)
def test_bad_arguments_raise_clear_errors(change, exc, match):
    model, train, val = tiny(dropout=0.0)
    before = snapshot(model)
    kw = dict(model=model, make_optimizer=sgd, loss_fn=mse, train_data=train, val_data=val,
              steps=3, progress=False, lr_range=(1e-3, 1e-1))
    kw.update(change)
    with pytest.raises(exc, match=match):
        F.find_lr(**kw)
    assert_same(model, before)


def test_old_smooth_keyword_still_works_with_a_deprecation_warning():
    """find_lr's bandwidth was called ``smooth`` (SALSA's ``smooth`` is an EMA factor)."""
    model, train, val = tiny(dropout=0.0, bn=False)
    batches = list(DataLoader(train.dataset, batch_size=16))
    kw = dict(steps=3, tol=0.5, progress=False, lr_range=(1e-3, 1e-1))
    new = F.find_lr(model, sgd, mse, batches, val, smooth_decades=0.0, **kw)
    with pytest.warns(DeprecationWarning, match="smooth_decades"):
        old = F.find_lr(model, sgd, mse, batches, val, smooth=0.0, **kw)
    assert old.picks == new.picks and old.curve.smooth_decades == 0.0
    with pytest.raises(TypeError, match="only smooth_decades"):
        F.find_lr(model, sgd, mse, batches, val, smooth=0.0, smooth_decades=0.3, **kw)
    with pytest.warns(DeprecationWarning, match="smooth_decades"):
        a = analyze([1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.5, 1.0, 3.0], smooth=0.0)
    assert a.d1 == analyze([1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.5, 1.0, 3.0], smooth_decades=0.0).d1
    with pytest.warns(DeprecationWarning, match="smooth_decades"):
        search_curve(lambda lrs: [(1.0,) for _ in lrs], (1e-3, 1e-1), smooth=0.0)


def test_non_finite_initial_loss_is_reported():
    model, train, val = tiny(dropout=0.0)
    with pytest.raises(ValueError, match="initial parameters"):
        F.find_lr(model, sgd, lambda m, b: mse(m, b) * math.nan, train, val, steps=3,
                  progress=False)


# ----------------------------------------------------------------------------- executors
def test_thread_executor_gives_the_same_result_as_sequential():
    model, train, val = tiny(dropout=0.0, bn=False)
    batches = list(DataLoader(train.dataset, batch_size=16))  # no randomness at all
    seq = F.find_lr(model, adam, mse, batches, val, steps=5, tol=0.25, progress=False)
    with ThreadPoolExecutor(2) as ex:
        par = F.find_lr(model, adam, mse, batches, val, steps=5, tol=0.25, progress=False,
                        executor=ex)
    assert sorted((t.lr, t.val_loss) for t in par.trials) == sorted(
        (t.lr, t.val_loss) for t in seq.trials)
    assert par.picks == seq.picks


@pytest.mark.slow  # multi-process: two worker processes
def test_process_executor_runs_trials_in_workers():
    model, train, val = tiny()
    before = snapshot(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # workers use one thread; BatchNorm's reductions depend on the count
    try:
        seq = F.find_lr(model, adam, mse, train, val, steps=5, lr_range=(1e-3, 1e-1), tol=0.25,
                        progress=False)
    finally:
        torch.set_num_threads(threads)
    par = F.find_lr(model, adam, mse, train, val, steps=5, lr_range=(1e-3, 1e-1), tol=0.25,
                    progress=False, executor="process", workers=2)
    assert_same(model, before)
    # same generator replay and data order in the workers: bit-identical trials and picks
    assert sorted((t.lr, t.val_loss) for t in par.trials) == sorted(
        (t.lr, t.val_loss) for t in seq.trials)
    assert par.picks == seq.picks


# ----------------------------------------------------------------------------- progress, plots
def test_progress_bar_can_be_shown_and_hidden(capsys):
    model, train, val = tiny(dropout=0.0)
    F.find_lr(model, sgd, mse, train, val, steps=3, lr_range=(1e-3, 1e-1), progress=True)
    assert "find_lr" in capsys.readouterr().err
    F.find_lr(model, sgd, mse, train, val, steps=3, lr_range=(1e-3, 1e-1), progress=False)
    assert capsys.readouterr().err == ""


def test_plot_writes_a_png_and_plot_results_compares(tmp_path):
    model, train, val = tiny()
    r = F.find_lr(model, adam, mse, train, val, steps=5, seeds=2, tol=0.25, progress=False)
    path = r.plot(str(tmp_path / "search.png"))
    assert path.endswith("search.png")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    fig = r.plot()
    assert len(fig.axes) == 2
    ramp = F.range_test(model, adam, mse, train, num_it=30, progress=False)
    out = F.plot_results([r, ramp], str(tmp_path / "both.png"))
    assert os.path.getsize(out) > 1000
    with pytest.raises(TypeError, match="FinderResult"):
        F.plot_results([r, "nope"])


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    import sys

    model, train, val = tiny()
    r = F.find_lr(model, adam, mse, train, val, steps=3, lr_range=(1e-3, 1e-1), progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        r.plot()


# ----------------------------------------------------------------------------- distributed
def _dist_worker(rank, port, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        model, train, val = tiny(seed=0, dropout=0.0)
        # each rank sees its own shard of the data
        xs, ys = train.dataset.tensors
        shard = [(xs[i:i + 16], ys[i:i + 16]) for i in range(rank * 64, rank * 64 + 64, 16)]
        vx, vy = val[0]
        r = F.find_lr(model, sgd, mse, shard, [(vx[rank::2], vy[rank::2])], steps=4,
                      lr_range=(1e-3, 10.0), tol=0.25, progress=False)
        queue.put((rank, r.lr, r.window, [(t.lr, t.val_loss, t.steps) for t in r.trials]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_ranks_agree():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_dist_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = dict((item[0], item[1:]) for item in (queue.get(timeout=60) for _ in procs))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert out[0] == out[1]
    assert any(t[2] < 4 for t in out[0][2])  # a divergence stop happened at the same step on both


# ----------------------------------------------------------------------------- CLI
def test_cli_find_lr_prints_results_and_writes_png(tmp_path, capsys):
    png = tmp_path / "cli.png"
    code = cli_main(["find-lr", "--steps", "5", "--tol", "0.25", "--seeds", "2", "--out", str(png),
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    for word in ("window", "log_midpoint", "half_drop", "steepest", "spread over seeds",
                 "steps spent", str(png)):
        assert word in out
    with open(png, "rb") as fh:
        assert fh.read(4) == b"\x89PNG"


def test_cli_fmnist_absent_and_bad_arguments(monkeypatch, capsys):
    import autostep.bench.tasks.fashion_mnist as fashion_mnist

    monkeypatch.setattr(fashion_mnist, "load_fashion_mnist", lambda data_dir=None: None)
    assert cli_main(["find-lr", "--problem", "fmnist", "--no-plot", "--no-progress"]) == 1
    assert "not installed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["find-lr", "--steps", "0"])
    assert "positive integer" in capsys.readouterr().err
    assert cli_main(["find-lr", "--lr-min", "1", "--lr-max", "0.1", "--no-plot"]) == 2
    assert "--lr-max" in capsys.readouterr().err
