"""Where the time of one line-search step goes: forward, backward, direction, dots, moves, Python.

For each method (SALSA, ALSALS, PLASLS by default) the script trains on fmnist_mlp (the digits MLP
when Fashion-MNIST is not installed), then times ``--steps`` steps with the optimizer's internal
functions wrapped by timers.  Times are CPU times (``time.process_time``, robust to a shared machine) and *exclusive* (a wrapped function's time excludes the wrapped
functions it calls), so the rows add up to the whole step; "Python / other" is what is left: the
engine's bookkeeping, the Armijo test, dispatch of the unwrapped parts.

Rows
    forward (grad)     the closure's first evaluation, with autograd recording
    backward           ``loss.backward()``
    trial forwards     the closure under ``torch.no_grad()`` at the trial points (all trials)
    evaluator          ClosureEvaluator around those calls: RNG snapshots, buffer guard, contract checks
    direction          Adam moments, denominators, search/final directions (``_plan`` minus the dots);
                       a reused step's fused Adam update (moments and move together)
    dots               ``<g, d>`` decrease terms, including the host read of their values
    moves              saving ``w0``, trial moves, the final move, restore
    Python / other     the rest of ``step()``

Beside each method, one plain Adam iteration (zero_grad + forward + backward + ``step``) and one
no-grad forward are timed in the same interleaved loop, so the floor ``1 + forward / Adam step``
and the ratio of each method to Adam are printed too.  The timers cost about a microsecond per
wrapped call; ``benchmarks/overhead.py`` measures without them.

Run:  python benchmarks/profile_step.py [--steps 300] [--methods SALSA ALSALS PLASLS] [--problem fmnist]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from collections import defaultdict

import torch

import autostep
from autostep.bench.tasks import digits_mlp, fmnist_mlp, load_fashion_mnist

METHODS = {
    "SALSA": lambda p: autostep.SALSA(p),
    "ALSALS": lambda p: autostep.ALSALS(p),
    "PLASLS": lambda p: autostep.PLASLS(p),
    "AdamSLS": lambda p: autostep.AdamSLS(p),
    "SLS": lambda p: autostep.SLS(p),
    "SALSA amortize=10": lambda p: autostep.SALSA(p, amortize=10),
}

ROWS = ["forward (grad)", "backward", "trial forwards", "evaluator", "direction", "dots", "moves",
        "Python / other"]

# (module, attribute path, label): functions timed when they exist in the installed version
TARGETS = [
    ("autostep._closure.evaluator", "ClosureEvaluator.__init__", "evaluator"),
    ("autostep._closure.evaluator", "ClosureEvaluator.first", "evaluator"),
    ("autostep._closure.evaluator", "ClosureEvaluator.trial", "evaluator"),
    ("autostep._closure.evaluator", "ClosureEvaluator.finish", "evaluator"),
    ("autostep._closure.evaluator", "ClosureEvaluator.reduce", "evaluator"),
    ("autostep._closure.evaluator", "ClosureEvaluator.read_start", "evaluator"),
    ("autostep.optim._optimizer", "AutostepOptimizer._evaluator", "evaluator"),
    ("autostep.optim._armijo_plan", "Segments._segments", "Python / other"),
    ("autostep.optim.layerwise", "PLASLS._segments", "Python / other"),
    ("autostep.optim._adam", "AdamMoments.__init__", "direction"),
    ("autostep.optim._adam", "AdamMoments.denom", "direction"),
    ("autostep.optim._adam", "AdamMoments.m_new", "direction"),
    ("autostep.optim._adam", "AdamMoments.commit", "direction"),
    ("autostep.optim._armijo_plan", "decrease_terms", "dots"),
    ("autostep.optim.sls", "SLS._plan", "direction"),
    ("autostep.optim.sls", "AdamSLS._plan", "direction"),
    ("autostep.optim.salsa", "SALSA._plan", "direction"),
    ("autostep.optim.salsa", "ALSALS._plan", "direction"),
    ("autostep.optim.layerwise", "PLASLS._plan", "direction"),
    ("autostep.optim._adam", "adam_moments", "direction"),
    # a reused step (amortised mode): moments and move in torch's fused kernel, counted here
    ("autostep.optim._adam_direction", "AdamDirection._reuse_update", "direction"),
    ("autostep.optim._reductions", "dots", "dots"),
    ("autostep.optim._reductions", "sq_norms", "dots"),
    ("autostep.optim._adam", "read_floats", "dots"),
    ("autostep.optim.sls", "_floats", "dots"),
    ("autostep._line", "Line.__init__", "moves"),
    ("autostep._line", "Line.move", "moves"),
    ("autostep._line", "Line.save", "moves"),
    ("autostep._line", "Line.scratch_sums", "dots"),
    ("autostep._line", "Line.restore", "moves"),
    ("autostep._line", "Line.release", "moves"),
    ("autostep._line", "axpy_", "moves"),
]


class Profiler:
    """Exclusive wall time per label; a stack subtracts nested timed calls from their callers."""

    def __init__(self):
        self.total = defaultdict(float)
        self.stack: list[float] = []  # time spent in nested timed calls, per open frame

    def timed(self, fn, label):
        prof = self

        def wrapper(*args, **kwargs):
            prof.stack.append(0.0)
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.process_time() - t0
                nested = prof.stack.pop()
                prof.total[label] += dt - nested
                if prof.stack:
                    prof.stack[-1] += dt

        wrapper.__wrapped__ = fn
        return wrapper


@contextlib.contextmanager
def instrumented(prof: Profiler):
    """Wrap TARGETS (and every module-level alias of a wrapped function) for the duration."""
    undo = []
    wrapped_funcs = {}
    for modname, path, label in TARGETS:
        mod = importlib.import_module(modname)
        owner, attr = mod, path
        if "." in path:
            cls, attr = path.split(".")
            owner = getattr(mod, cls, None)
            if owner is None:
                continue
            if attr not in vars(owner):  # inherited: wrap where it is defined, once
                continue
        fn = getattr(owner, attr, None)
        if fn is None:
            continue
        w = prof.timed(fn, label)
        setattr(owner, attr, w)
        undo.append((owner, attr, fn))
        if owner is mod:
            wrapped_funcs[fn] = w
    # modules that imported a wrapped function by name (``from ._adam import dots``)
    for name in ("autostep.optim.sls", "autostep.optim.salsa", "autostep.optim.layerwise",
                 "autostep.optim._adam_direction",
                 "autostep.optim._armijo", "autostep.optim._armijo_plan", "autostep._line",
                 "autostep.optim._adam", "autostep.optim._reductions"):
        mod = importlib.import_module(name)
        for attr, val in list(vars(mod).items()):
            if callable(val) and val in wrapped_funcs and getattr(mod, attr) is not wrapped_funcs[val]:
                setattr(mod, attr, wrapped_funcs[val])
                undo.append((mod, attr, val))
    try:
        yield
    finally:
        for owner, attr, fn in reversed(undo):
            setattr(owner, attr, fn)


def problem_factory(name: str):
    if name == "fmnist" and load_fashion_mnist() is not None:
        return "fmnist_mlp (784-256-128-10, batch 128)", lambda: fmnist_mlp(seed=0)
    if name == "fmnist":
        print("Fashion-MNIST not installed; using the digits MLP")
    return "digits_mlp (64-64-10, batch 64)", lambda: digits_mlp(seed=0)


def profile(method: str, factory, steps: int, warmup: int) -> dict:
    prob = factory()
    model, loss_fn = prob.model, prob.loss_fn
    opt = METHODS[method](model.parameters())
    batches = prob.batch_list(warmup + steps, seed=0)
    ref = factory()  # Adam and the no-grad forward on a twin model, interleaved step by step
    adam = torch.optim.Adam(ref.model.parameters(), lr=1e-3)
    prof = Profiler()
    adam_t, fwd_t, step_t = [], [], []
    trials = 0

    def run_step(xb, yb, timed: bool):
        nonlocal trials
        if timed:
            def closure():
                t0 = time.process_time()
                try:
                    return loss_fn(model, (xb, yb))
                finally:
                    label = "forward (grad)" if torch.is_grad_enabled() else "trial forwards"
                    dt = time.process_time() - t0
                    prof.total[label] += dt
                    if prof.stack:
                        prof.stack[-1] += dt
        else:
            def closure():
                return loss_fn(model, (xb, yb))
        opt.step(closure)
        trials += opt.last_step.get("trials", 0) if timed else 0

    real_backward = torch.Tensor.backward

    def timed_backward(self, *a, **k):
        t0 = time.process_time()
        try:
            return real_backward(self, *a, **k)
        finally:
            dt = time.process_time() - t0
            prof.total["backward"] += dt
            if prof.stack:
                prof.stack[-1] += dt

    for xb, yb in batches[:warmup]:
        run_step(xb, yb, False)
    for i, (xb, yb) in enumerate(batches[warmup:]):
        # plain Adam iteration
        t0 = time.process_time()
        adam.zero_grad(set_to_none=True)
        loss_fn(ref.model, (xb, yb)).backward()
        adam.step()
        adam_t.append(time.process_time() - t0)
        # one no-grad forward
        t0 = time.process_time()
        with torch.no_grad():
            loss_fn(ref.model, (xb, yb))
        fwd_t.append(time.process_time() - t0)
        # the method's step, instrumented
        torch.Tensor.backward = timed_backward
        try:
            with instrumented(prof):
                before = sum(prof.total.values())
                prof.stack.append(0.0)
                t0 = time.process_time()
                run_step(xb, yb, True)
                dt = time.process_time() - t0
                nested = prof.stack.pop()
                prof.total["Python / other"] += dt - nested
                step_t.append(dt)
                del before
        finally:
            torch.Tensor.backward = real_backward
    n = len(step_t)
    per_step = {k: 1000 * v / n for k, v in prof.total.items()}
    return {
        "method": method,
        "rows": per_step,
        "step_ms": 1000 * sum(step_t) / n,
        "step_med_ms": 1000 * statistics.median(step_t),
        "adam_ms": 1000 * statistics.median(adam_t),
        "fwd_ms": 1000 * statistics.median(fwd_t),
        "trials": trials / n,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=["fmnist", "digits"], default="fmnist")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--methods", nargs="+", default=["SALSA", "ALSALS", "PLASLS"], choices=list(METHODS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    title, factory = problem_factory(args.problem)
    print(f"torch {torch.__version__}, 1 thread, {title}, {args.steps} timed steps after {args.warmup}")
    results = [profile(m, factory, args.steps, args.warmup) for m in args.methods]
    print("\nms per step (mean; exclusive times, rows add up to the step)\n")
    print("| part | " + " | ".join(r["method"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for row in ROWS:
        print(f"| {row} | " + " | ".join(f"{r['rows'].get(row, 0.0):.3f}" for r in results) + " |")
    print("| **step (mean)** | " + " | ".join(f"**{r['step_ms']:.3f}**" for r in results) + " |")
    print("| step (median) | " + " | ".join(f"{r['step_med_ms']:.3f}" for r in results) + " |")
    print("| trials / step | " + " | ".join(f"{r['trials']:.2f}" for r in results) + " |")
    print("| Adam iteration (median) | " + " | ".join(f"{r['adam_ms']:.3f}" for r in results) + " |")
    print("| no-grad forward (median) | " + " | ".join(f"{r['fwd_ms']:.3f}" for r in results) + " |")
    print("| step / Adam (medians) | " + " | ".join(f"{r['step_med_ms'] / r['adam_ms']:.2f}" for r in results) + " |")
    print("| floor 1 + fwd / Adam | " + " | ".join(f"{1 + r['fwd_ms'] / r['adam_ms']:.2f}" for r in results) + " |")
    print("| beyond forwards+backward+Adam-work (ms) | " + " | ".join(
        f"{r['step_ms'] - sum(r['rows'].get(k, 0.0) for k in ('forward (grad)', 'backward', 'trial forwards')):.3f}"
        for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
