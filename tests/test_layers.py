"""The layers stay apart: the library (optimizers, find_lr, range_test, AutoLR, loss_along_lines)
takes the user's model and never imports the demo and benchmark tasks; the command-line faces live
beside autostep.cli; the optimizer names of the two commands mean the same thing."""

import subprocess
import sys
import textwrap

import pytest
import torch

import autostep.cli_find_lr as cli_find_lr
from autostep.cli import main as cli_main


@pytest.mark.slow
def test_library_runs_without_importing_the_problems():
    code = textwrap.dedent("""
        import sys
        import torch
        from torch import nn
        import autostep
        torch.manual_seed(0)
        x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        model = nn.Linear(4, 3)
        loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
        batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        autostep.find_lr(model, lambda p, lr: torch.optim.SGD(p, lr=lr), loss, batches,
                         batches[:1], steps=2, tol=1.0, max_rounds=0, progress=False)
        autostep.loss_along_lines(model, loss, (x, y), steps=2, every=1, batch_size=16,
                                  grid=[-0.1, 0.0, 0.1], progress=False)
        leaked = sorted(m for m in sys.modules if m.startswith(("autostep.problems", "autostep.bench",
                                                                "autostep.demo", "autostep.cli")))
        assert not leaked, leaked
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


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
