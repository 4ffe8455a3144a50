"""Per-step CPU cost of autostep's optimizers relative to torch.optim.Adam, in one process.

For each model (digits MLP 64-64-10 batch 64; Fashion-MNIST MLP 784-256-128-10 batch 128 when
Debian's dataset-fashion-mnist is installed) every method trains on the same batches; methods are
interleaved round-robin in blocks of steps so drifts of the machine hit all of them alike, and the
process runs on one torch thread.  Printed per method:

* CPU time per step / Adam's (median over blocks of the per-block ratio);
* forwards and backwards per step;
* optimizer state / parameter size: persistent state (tensors in ``optimizer.state``) and the peak
  including the transient buffers autostep allocates inside a step (the saved start point ``w0``
  and Adam's ``denom``/direction), counted by instrumenting those allocations.

Run:  python benchmarks/overhead.py [--steps 600] [--block 50] [--models digits fmnist]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

import autostep
from autostep import _line
from autostep.optim import _adam
from autostep.problems import digits_mlp, fashion_mnist_mlp

METHODS = {
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1),
    "SLS": lambda p: autostep.SLS(p),
    "AdamSLS": lambda p: autostep.AdamSLS(p),
    "SALSA": lambda p: autostep.SALSA(p),
    "ALSALS": lambda p: autostep.ALSALS(p),
    "PLASLS": lambda p: autostep.PLASLS(p),
    "SALSA amortize=10": lambda p: autostep.SALSA(p, amortize=10),
    "ALSALS amortize=10": lambda p: autostep.ALSALS(p, amortize=10),
    "PAL": lambda p: autostep.PAL(p),
    "LABPAL sgd": lambda p: autostep.LABPAL(p, mode="sgd"),
    "LABPAL nsgd": lambda p: autostep.LABPAL(p, mode="nsgd"),
}


class TransientCounter:
    """Counts elements of the buffers autostep allocates inside one step (w0 copies, denoms)."""

    def __init__(self):
        self.current = 0
        self.peak = 0
        self._orig_line = _line.Line.__init__
        self._orig_moments = _adam.adam_moments

    def __enter__(self):
        counter = self

        def line_init(obj, params, dirs):
            counter._orig_line(obj, params, dirs)
            counter.current += sum(t.numel() for seg in obj.w0 for t in seg)

        def moments(*a, **k):
            out = counter._orig_moments(*a, **k)
            counter.current += sum(t.numel() for t in out[2])
            return out

        _line.Line.__init__ = line_init
        _adam.adam_moments = moments
        import autostep.optim.sls as sls
        sls.adam_moments = moments
        return self

    def end_step(self):
        self.peak = max(self.peak, self.current)
        self.current = 0

    def __exit__(self, *exc):
        _line.Line.__init__ = self._orig_line
        _adam.adam_moments = self._orig_moments
        import autostep.optim.sls as sls
        sls.adam_moments = self._orig_moments


def state_numel(opt) -> int:
    n = 0
    for st in opt.state.values():
        if isinstance(st, dict):
            n += sum(v.numel() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    return n


def run_model(problem_factory, names, steps, block, extra_methods):
    methods = dict(METHODS)
    methods.update(extra_methods)
    setups = {}
    for name in names:
        prob = problem_factory()
        model = prob.model
        opt = methods[name](model.parameters())
        batches = prob.batch_list(steps, seed=0)
        setups[name] = (prob, model, opt, batches)
    n_params = sum(p.numel() for p in setups[names[0]][1].parameters())
    cpu = {n: [] for n in names}
    peaks = {}
    pos = 0
    diverged = {}
    # warm-up block (not timed)
    for name in names:
        try:
            _train_block(*setups[name], 0, min(block, steps))
        except autostep.NonFiniteLossError:
            diverged[name] = 0
    pos = min(block, steps)
    while pos + block <= steps:
        for name in names:
            if name in diverged:
                cpu[name].append(math.nan)
                continue
            t0 = time.process_time()
            try:
                _train_block(*setups[name], pos, pos + block)
            except autostep.NonFiniteLossError:  # timing stops; the blocks it finished still count
                diverged[name] = pos
                cpu[name].append(math.nan)
                continue
            cpu[name].append((time.process_time() - t0) / block)
        pos += block
    rows = []
    for name in names:
        prob, model, opt, batches = setups[name]
        peaks[name] = 0
        if name not in diverged:
            with TransientCounter() as tc:
                try:
                    for k in range(3):
                        _train_block(prob, model, opt, batches, k, k + 1)
                        tc.end_step()
                except autostep.NonFiniteLossError:
                    diverged[name] = pos
                peaks[name] = tc.peak
        ratios = [c / a for c, a in zip(cpu[name], cpu["Adam"]) if math.isfinite(c)] or [math.nan]
        sgd = [c / a for c, a in zip(cpu[name], cpu["SGD"]) if math.isfinite(c)] or [math.nan]
        fw = getattr(opt, "forwards", None)
        bw = getattr(opt, "backwards", None)
        total_steps = max(1, opt_steps(opt, pos + 3))
        rows.append({
            "method": name,
            "cpu_ratio": statistics.median(ratios),
            "sgd_ratio": statistics.median(sgd),
            "ms_per_step": 1000 * statistics.median([c for c in cpu[name] if math.isfinite(c)] or [math.nan]),
            "diverged": diverged.get(name),
            "fwd": (fw / total_steps) if fw is not None else 1.0,
            "bwd": (bw / total_steps) if bw is not None else 1.0,
            "state": state_numel(opt) / n_params,
            "peak": (state_numel(opt) + peaks[name]) / n_params,
        })
    return rows, n_params


def opt_steps(opt, default: int) -> int:
    """Steps the optimizer actually took (its own counter when it has one)."""
    return getattr(opt, "steps", None) or default


def _train_block(prob, model, opt, batches, start, end):
    loss_fn = prob.loss_fn
    for xb, yb in batches[start:end]:
        if isinstance(opt, (torch.optim.Adam, torch.optim.SGD)):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, (xb, yb))
            loss.backward()
            opt.step()
        else:
            opt.step(lambda: loss_fn(model, (xb, yb)))


def print_table(title, rows, n_params):
    print(f"\n## {title}  ({n_params} parameters)\n")
    print("| method | CPU time / Adam | CPU time / SGD | ms/step | forwards/step | backwards/step | state / params | peak state / params |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        label = r["method"] + (f" (diverged in the block from step {r['diverged']}; only earlier blocks timed)" if r["diverged"] is not None else "")
        print(f"| {label} | {r['cpu_ratio']:.2f} | {r['sgd_ratio']:.2f} | {r['ms_per_step']:.2f} | {r['fwd']:.2f} | "
              f"{r['bwd']:.2f} | {r['state']:.2f} | {r['peak']:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--models", nargs="+", default=["digits", "fmnist"], choices=["digits", "fmnist"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="method names (Adam is always included)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = ["Adam", "SGD"] + [m for m in args.methods if m not in ("Adam", "SGD")]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps per method in blocks of {args.block}")
    for model in args.models:
        if model == "digits":
            rows, n = run_model(lambda: digits_mlp(seed=0), names, args.steps, args.block, {})
            print_table("digits MLP 64-64-10, batch 64", rows, n)
        else:
            if fashion_mnist_mlp() is None:
                print("\n## Fashion-MNIST MLP: skipped (apt-get install dataset-fashion-mnist)")
                continue
            factory = lambda: fashion_mnist_mlp(seed=0)  # noqa: E731
            rows, n = run_model(factory, names, args.steps, args.block, {})
            print_table("Fashion-MNIST MLP 784-256-128-10, batch 128", rows, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
