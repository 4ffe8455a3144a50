"""Whole-run CPU cost of Autostep against Adam (+ warm-up + cosine), measured in one process.

Both optimizers train their own copy of the same model on the same batches, one step each in turn,
so machine noise hits both alike; the ratio of their summed process times (forward, backward and
step, plus Autostep's probe forwards) is the figure to quote.  Usage::

    python benchmarks/autostep_overhead.py [--problem fmnist_mlp] [--steps 800] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from autostep import Autostep  # noqa: E402
from autostep.bench.streams import probe_batches, train_batches  # noqa: E402
from autostep.bench.tasks import SUITES, build_problem  # noqa: E402
from autostep.bench.stepper import cosine_factor  # noqa: E402


def one(problem: str, steps: int, seed: int) -> tuple[float, float, int]:
    task = build_problem(problem, seed)
    m_adam, m_auto = task.model, copy.deepcopy(task.model)
    adam = torch.optim.Adam(m_adam.parameters(), lr=1e-3)
    auto = Autostep(m_auto.parameters(), total_steps=steps, model=m_auto, loss_fn=task.loss_fn,
                    probe_data=probe_batches(task, 2, seed))
    t_adam = t_auto = 0.0
    for t, batch in enumerate(train_batches(task, steps, seed)):
        for g in adam.param_groups:
            g["lr"] = 1e-3 * cosine_factor(t, steps, max(1, steps // 20))
        for model, opt in ((m_adam, adam), (m_auto, auto)) if t % 2 else ((m_auto, auto), (m_adam, adam)):
            t0 = time.process_time()
            opt.zero_grad()
            task.loss_fn(model, batch).backward()
            opt.step()
            dt = time.process_time() - t0
            if opt is adam:
                t_adam += dt
            else:
                t_auto += dt
    return t_adam, t_auto, auto.probe_forwards


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", default="fmnist_mlp")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    steps = a.steps or SUITES["standard"].get(a.problem, 500)
    ratios = []
    for r in range(a.repeats):
        t_adam, t_auto, probes = one(a.problem, steps, r)
        ratios.append(t_auto / t_adam)
        print(f"run {r}: Adam {1e3 * t_adam / steps:.3f} ms/step, Autostep {1e3 * t_auto / steps:.3f} ms/step, "
              f"ratio {t_auto / t_adam:.3f}, probe forwards {probes} ({probes / steps:.3f}/step)")
    print(f"{a.problem}, {steps} steps: Autostep / Adam CPU time, median of {a.repeats}: "
          f"{statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
