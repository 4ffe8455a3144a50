"""Bad input on the command line: one line on stderr, a non-zero exit, nothing run (issue 11 item 11).

Also the checks behind it: writable output paths, malformed cached bench runs, find_lr's refusal to
return a rate that diverged (issue 11 item 6) and models on the meta device.
"""

import json
import math
import os

import pytest
import torch
from torch import nn

import autostep
from autostep import _outputs
from autostep.bench import runner
from autostep.cli import main

PROC = "/proc/autostep-no-such-dir/out"  # a location no one (not even root) can create


def run_cli(argv, capsys):
    """(exit code, stderr) of ``autostep argv``, whether it returned or raised SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=__import__("sys").stderr)
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code, err, match):
    assert code != 0
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert match in err, err


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any training starts (the checks must come first)."""
    import autostep.bench.harness as harness
    import autostep.finder as finder
    import autostep.lines as lines

    def boom(*a, **k):
        pytest.fail("work started before the bad input was reported")

    monkeypatch.setattr(finder, "find_lr", boom)
    monkeypatch.setattr(lines, "loss_along_lines", boom, raising=False)
    monkeypatch.setattr(harness, "run_bench", boom)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file.txt"
    path.write_text("keep me")
    return path


# ----------------------------------------------------------------------------- find-lr
def test_find_lr_infinite_lr_max(capsys, no_work):
    code, err = run_cli(["find-lr", "--lr-max", "inf", "--no-plot"], capsys)
    assert_one_line(code, err, "finite")


@pytest.mark.parametrize("where", ["under_file", "folder", "unwritable"])
def test_find_lr_bad_out_is_reported_before_the_search(where, a_file, tmp_path, capsys, no_work):
    out = {"under_file": str(a_file / "plot.png"), "folder": str(tmp_path),
           "unwritable": PROC + ".png"}[where]
    code, err = run_cli(["find-lr", "--out", out, "--no-progress"], capsys)
    assert_one_line(code, err, "--out")
    assert a_file.read_text() == "keep me"


# ----------------------------------------------------------------------------- lines
@pytest.mark.parametrize("argv, match", [
    (["--steps", "0"], "--steps"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--every", "0"], "--every"),
    (["--grid", "1,2"], "--grid"),
    (["--optimizer", "nosuch"], "--optimizer"),
])
def test_lines_bad_arguments(argv, match, capsys, no_work):
    code, err = run_cli(["lines", "--out", ""] + argv, capsys)
    assert_one_line(code, err, match)


def test_lines_bad_out_is_reported_before_training(a_file, capsys, no_work):
    code, err = run_cli(["lines", "--steps", "2", "--out", str(a_file / "x.png")], capsys)
    assert_one_line(code, err, "a file, not a folder")
    code, err = run_cli(["lines", "--steps", "2", "--out", PROC + ".png"], capsys)
    assert_one_line(code, err, "--out")


# ----------------------------------------------------------------------------- demo
def test_demo_unknown_method(capsys):
    code, err = run_cli(["demo", "--methods", "nosuch", "--steps", "1"], capsys)
    assert_one_line(code, err, "nosuch")


def test_demo_trains_on_the_bench_digits_task_and_prints_its_table(monkeypatch):
    import autostep.bench.tasks.fashion_mnist as fashion_mnist
    from autostep.demo import run_demo

    import warnings

    printed = []
    with warnings.catch_warnings():  # Adam's loss was converted with its graph attached (a UserWarning)
        warnings.simplefilter("error", UserWarning)
        runs = run_demo("digits", steps=4, methods=["Adam 1e-3", "SLS"], log_every=2, out=printed.append)
    assert [r["method"] for r in runs] == ["Adam 1e-3", "SLS"]
    assert all(math.isfinite(r["train_loss"]) and 0 <= r["test_acc"] <= 1 for r in runs)
    assert any(line.startswith("| SLS |") for line in printed)
    monkeypatch.setattr(fashion_mnist, "load_fashion_mnist", lambda data_dir=None: None)
    with pytest.raises(SystemExit, match="not installed"):
        run_demo("fmnist", steps=1, methods=["SLS"], out=printed.append)


# ----------------------------------------------------------------------------- bench
@pytest.mark.parametrize("where", ["existing_file", "under_file", "unwritable"])
def test_bench_bad_out_is_reported_before_any_run(where, a_file, capsys, no_work):
    out = {"existing_file": str(a_file), "under_file": str(a_file / "bench"),
           "unwritable": PROC}[where]
    code, err = run_cli(["bench", "--suite", "tiny", "--out", out, "--no-progress"], capsys)
    assert_one_line(code, err, out)
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("content", [
    [1, 2, 3],                                             # a JSON list
    "no config",                                           # a JSON string
    {"status": "ok"},                                      # another config (none)
    "missing curve",                                       # an ok run without its curve
])
def test_malformed_run_files_are_ignored_and_rerun(content, tmp_path):
    cfg = runner.RunConfig("quadratic", "Adam", 0, 10)
    path = runner.run_path(str(tmp_path), cfg)
    os.makedirs(os.path.dirname(path))
    if content == "missing curve":
        good = runner.run_one(cfg)
        runner.save_run(str(tmp_path), cfg, good)
        assert runner.load_run(str(tmp_path), cfg) == json.loads(json.dumps(good))
        content = {k: v for k, v in good.items() if k != "curve"}
    with open(path, "w") as f:
        json.dump(content, f)
    assert runner.load_run(str(tmp_path), cfg) is None


# ----------------------------------------------------------------------------- the checks
def test_output_checks_keep_existing_files_and_leave_nothing_behind(tmp_path, a_file):
    assert _outputs.check_output_file(str(a_file)) == str(a_file)
    assert a_file.read_text() == "keep me"
    new = tmp_path / "sub" / "new.png"
    _outputs.check_output_file(str(new))
    assert not new.exists() and new.parent.is_dir()
    _outputs.check_output_dir(str(tmp_path / "d"))
    assert list((tmp_path / "d").iterdir()) == []
    with pytest.raises(_outputs.OutputPathError, match="existing file"):
        _outputs.check_output_dir(str(a_file))
    with pytest.raises(_outputs.OutputPathError, match="is a folder"):
        _outputs.check_output_file(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(_outputs.OutputPathError, match="cannot write"):
            _outputs.check_output_dir(str(ro))
        with pytest.raises(_outputs.OutputPathError, match="cannot write"):
            _outputs.check_output_file(str(ro / "x.png"))
    finally:
        ro.chmod(0o700)


# ----------------------------------------------------------------------------- find_lr (item 6)
def _regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g)
    torch.manual_seed(0)
    return nn.Linear(4, 1), [(x[:32], y[:32])], [(x[32:], y[32:])]


def mse(model, batch):
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def test_find_lr_refuses_when_every_trial_diverges():
    model, train, val = _regression()
    before = [p.detach().clone() for p in model.parameters()]
    sgd = lambda p, lr: torch.optim.SGD(p, lr=lr)  # noqa: E731

    def exploding(m, batch):  # a loss that grows whatever the rate: every trial diverges
        exploding.calls += 1
        return mse(m, batch) * 10.0 ** exploding.calls
    exploding.calls = 0
    with pytest.raises(autostep.NoViableRateError, match="every trial diverged") as info:
        autostep.find_lr(model, sgd, exploding, train, val, steps=3, lr_range=(1e-3, 1e-1),
                         progress=False)
    res = info.value.result
    assert res.trials and all(t.diverged for t in res.trials)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_find_lr_still_returns_a_finite_viable_rate():
    model, train, val = _regression()
    res = autostep.find_lr(model, lambda p, lr: torch.optim.SGD(p, lr=lr), mse, train, val,
                           steps=5, lr_range=(1e-3, 10.0), tol=0.25, progress=False)
    best = [t for t in res.trials if abs(math.log10(t.lr) - math.log10(res.window[1])) < 1e-9]
    assert best and not best[0].diverged and math.isfinite(res.lr)


def test_find_lr_meta_device_model_is_refused_clearly():
    m = nn.Linear(3, 1, device="meta")
    with pytest.raises(ValueError, match="'meta' device"):
        autostep.find_lr(m, lambda p, lr: torch.optim.Adam(p, lr=lr), lambda mm, b: mm(b).sum(),
                         [torch.zeros(2, 3)], [torch.zeros(2, 3)], steps=1, progress=False)
