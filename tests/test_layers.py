"""The layers stay apart: the library (optimizers, find_lr, range_test, AutoLR, loss_along_lines)
takes the user's model and never imports the demo and benchmark tasks; the command-line faces live
beside autostep.cli; the optimizer names of the two commands mean the same thing."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import autostep.cli_find_lr as cli_find_lr
from autostep.cli import main as cli_main


@pytest.mark.slow  # one fresh interpreter (~3.5 s) for the three checks that need one
def test_library_leaves_tasks_unimported_and_the_pyplot_backend_alone(tmp_path):
    """In a fresh process whose user chose the svg backend: find_lr and loss_along_lines (with its
    PNG and plot) import neither the demo/benchmark tasks nor the command-line faces, and neither
    they nor the benchmark report (a module of the library too) switch matplotlib's backend -- at
    import or at run time."""
    from test_bench_protocol import BASELINE, _fake_results

    losses = {BASELINE: {"a": [1.0, 2.0, 4.0]}, "Autostep": {"a": [1.1, 2.1, 3.9]}}
    results = _fake_results(list(losses), losses)
    for r in results["runs"]:
        r["val_loss"] = r["train_loss"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    code = textwrap.dedent(f"""
        import json, sys
        import matplotlib
        matplotlib.use("svg")
        import torch
        from torch import nn
        import autostep
        from autostep.lines import plot
        torch.manual_seed(0)
        x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        model = nn.Linear(4, 3)
        loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
        batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        autostep.find_lr(model, lambda p, lr: torch.optim.SGD(p, lr=lr), loss, batches,
                         batches[:1], steps=2, tol=1.0, max_rounds=0, progress=False)
        r = autostep.loss_along_lines(model, loss, (x, y), steps=2, every=1, batch_size=16,
                                      grid=[-0.1, 0.0, 0.1], progress=False, out={str(tmp_path / "a.png")!r})
        plot(r)
        leaked = sorted(m for m in sys.modules if m.startswith(("autostep.problems", "autostep.bench",
                                                                "autostep.demo", "autostep.cli")))
        assert not leaked, leaked
        assert matplotlib.get_backend() == "svg", ("lines", matplotlib.get_backend())
        from autostep.bench.report import write_report
        write_report(json.load(open({str(tmp_path / "results.json")!r})), {str(tmp_path)!r})
        assert matplotlib.get_backend() == "svg", ("report", matplotlib.get_backend())
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a.png").stat().st_size > 1000
    assert (tmp_path / "curves_a.png").stat().st_size > 1000 and (tmp_path / "report.md").exists()


def test_sgd_means_plain_sgd_in_both_commands_and_sgd_momentum_says_so():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert cli_find_lr.make_optimizer("sgd")(p, 0.1).param_groups[0]["momentum"] == 0
    assert cli_find_lr.make_optimizer("sgd-momentum")(p, 0.1).param_groups[0]["momentum"] == 0.9
    from autostep.lines import _make_optimizer
    assert _make_optimizer("sgd", p, None, 10).param_groups[0]["momentum"] == 0
    assert _make_optimizer("sgd-momentum", p, None, 10).param_groups[0]["momentum"] == 0.9


def test_find_lr_cli_says_that_sgd_changed_meaning(capsys):
    assert cli_main(["find-lr", "--optimizer", "sgd", "--steps", "2", "--tol", "1.0",
                     "--lr-min", "0.01", "--lr-max", "0.1", "--no-plot", "--no-progress"]) == 0
    assert "sgd-momentum" in capsys.readouterr().err
