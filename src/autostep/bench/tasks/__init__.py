"""The one set of tasks: the benchmark's problems, also used by ``autostep demo``, ``lines`` and ``find-lr``.

Every problem is a :class:`Task` built by ``PROBLEMS[name](seed, data_dir)``: the seed fixes the
model's initialisation (without touching the caller's random generators), the split is fixed.
Missing optional data makes the builder raise :class:`DataMissing` with the reason; the benchmark
reports and skips it.  One module per kind of data:

* :mod:`.synthetic`  ``quadratic``, ``matfac``, ``matfac_k4`` (exact optimum: the train loss is a
  suboptimality);
* :mod:`.digits`  ``digits_mlp`` (scikit-learn digits, MLP 64-64-10);
* :mod:`.fashion_mnist`  ``fmnist_logreg``, ``fmnist_mlp`` (784-256-128-10), ``fmnist_cnn`` (14×14
  inputs), ``resnet20_fmnist`` (32×32, for ``--device cuda``);
* :mod:`.text`  ``char_gpt`` (2-layer character transformer) and ``char_gpt_large`` (for a GPU);
* :mod:`.task`  the :class:`Task` dataclass and the helpers the builders share.

:data:`SUITES` says which problems a suite runs and for how many steps.
"""

from __future__ import annotations

from typing import Callable

from .digits import digits_mlp
from .fashion_mnist import (FASHION_MNIST_DIRS, fmnist_cnn, fmnist_logreg, fmnist_mlp, load_fashion_mnist,
                            resnet20_fmnist)
from .synthetic import matfac, matfac_k4, quadratic
from .task import DataMissing, Evaluation, Task, mlp
from .text import char_gpt, char_gpt_large

__all__ = ["Task", "Evaluation", "DataMissing", "PROBLEMS", "SUITES", "DEMO_TASKS", "build_problem",
           "demo_task", "digits_mlp", "fmnist_mlp", "load_fashion_mnist", "FASHION_MNIST_DIRS", "mlp"]

PROBLEMS: dict[str, Callable[..., Task]] = {
    "quadratic": quadratic,
    "matfac": matfac,
    "matfac_k4": matfac_k4,
    "digits_mlp": digits_mlp,
    "fmnist_logreg": fmnist_logreg,
    "fmnist_mlp": fmnist_mlp,
    "fmnist_cnn": fmnist_cnn,
    "char_gpt": char_gpt,
    "resnet20_fmnist": resnet20_fmnist,
    "char_gpt_large": char_gpt_large,
}

#: suite -> {problem: optimizer steps per run}
SUITES: dict[str, dict[str, int]] = {
    "quick": {"quadratic": 800, "matfac": 800, "digits_mlp": 1000},
    "standard": {"quadratic": 500, "matfac": 500, "matfac_k4": 500, "digits_mlp": 600,
                 "fmnist_logreg": 500, "fmnist_mlp": 800, "fmnist_cnn": 300, "char_gpt": 200},
    "long": {"fmnist_mlp": 5000, "fmnist_cnn": 3000, "char_gpt": 2000},
    "gpu": {"resnet20_fmnist": 3000, "char_gpt_large": 2000},
    "tiny": {"quadratic": 12, "digits_mlp": 12},
}

#: the short names of the command-line faces (``autostep demo/lines/find-lr --problem``)
DEMO_TASKS = {"digits": "digits_mlp", "fmnist": "fmnist_mlp"}


def build_problem(name: str, seed: int, data_dir=None, device="cpu") -> Task:
    """``PROBLEMS[name](seed, data_dir)``, moved to ``device``; raises :class:`DataMissing` when the
    problem's data is not installed."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {', '.join(PROBLEMS)}")
    task = PROBLEMS[name](seed=seed, data_dir=data_dir)
    return task.to(device) if str(device) != "cpu" else task


def demo_task(name: str, seed: int = 0, data_dir=None) -> Task:
    """The task behind a command-line ``--problem`` (``"digits"`` or ``"fmnist"``)."""
    if name not in DEMO_TASKS:
        raise ValueError(f"unknown problem {name!r}; choose from {', '.join(DEMO_TASKS)}")
    return build_problem(DEMO_TASKS[name], seed, data_dir)
