"""Per-step CPU cost of autostep's optimizers relative to torch.optim.Adam, in one process.

For each model (digits MLP 64-64-10 batch 64; Fashion-MNIST MLP 784-256-128-10 batch 128 when
Debian's dataset-fashion-mnist is installed) every method trains on the same batches; methods are
interleaved round-robin in blocks of steps so drifts of the machine hit all of them alike, and the
process runs on one torch thread.  Printed per method:

* CPU time per step / Adam's (median over blocks of the per-block ratio), and the **floor** of a
  line search, ``1 + forward / Adam step`` (one no-grad forward on the same batches, timed in the
  same rotation), with each method's distance to it (``ratio - floor``);
* forwards and backwards per step;
* optimizer state / parameter size: persistent state (tensors in ``optimizer.state``) and the peak
  including the transient buffers autostep allocates inside a step (the saved start point ``w0``
  and Adam's ``denom``/direction), counted by instrumenting those allocations.

``--ref SRC`` also loads another autostep source tree (e.g. an export of main before a change:
``git archive <commit> src | tar -x -C /tmp/ref``, then ``--ref /tmp/ref/src``) under the name
``autostep_ref`` and times its versions of the chosen methods in the same rotation (rows
"<method> (ref)"): a before/after comparison on a shared machine, in one process.

Run:  python benchmarks/overhead.py [--steps 600] [--block 50] [--models digits fmnist] [--ref SRC]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time

import torch

import autostep
from autostep import _line
from autostep.optim import _adam
from autostep.bench.tasks import build_problem, digits_mlp, fmnist_mlp, load_fashion_mnist


def line_search_methods(pkg) -> dict:
    """The closure methods timed here, built from the autostep package ``pkg`` (this tree's, or the
    reference tree's loaded by :func:`load_ref`)."""
    return {
        "SLS": lambda p: pkg.SLS(p),
        "AdamSLS": lambda p: pkg.AdamSLS(p),
        "SALSA": lambda p: pkg.SALSA(p),
        "ALSALS": lambda p: pkg.ALSALS(p),
        "PLASLS": lambda p: pkg.PLASLS(p),
        "SALSA amortize=10": lambda p: pkg.SALSA(p, amortize=10),
        "ALSALS amortize=10": lambda p: pkg.ALSALS(p, amortize=10),
        "PAL": lambda p: pkg.PAL(p),
        "LABPAL sgd": lambda p: pkg.LABPAL(p, mode="sgd"),
        "LABPAL nsgd": lambda p: pkg.LABPAL(p, mode="nsgd"),
    }


METHODS = {
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    # torch's one-pass kernel (not the default on CPU): the cheapest Adam a user can pick
    "Adam-fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1),
    **line_search_methods(autostep),
}
try:  # the published SaLSa (pip install salsa-optimizer), for issue 13's "1.5x faster than it"
    from salsa.SaLSA import SaLSA as _PublishedSaLSA

    # its default is speed_up=True: up to 10 steps between searches, its amortised mode (compare
    # with "SALSA amortize=10"); speed_up=False searches every step (compare with "SALSA")
    METHODS["SaLSa-published"] = lambda p: _PublishedSaLSA(p)
    METHODS["SaLSa-published speed_up=False"] = lambda p: _PublishedSaLSA(p, speed_up=False)
except ImportError:  # the peers extra is not installed
    _PublishedSaLSA = None


class TransientCounter:
    """Counts elements of the buffers autostep allocates inside one step (w0 copies, denoms,
    provisional momentum).  Knows the layout of this tree (``flat_buffer``, ``AdamMoments``) and of
    older trees (``Line.__init__``, ``adam_moments``)."""

    def __init__(self, pkg=None):
        self.pkg = pkg or autostep
        self.current = 0
        self.peak = 0
        self.searched = False  # whether a counted step searched (see run_model)
        self._undo = []

    def _patch(self, owner, name, wrapper_factory):
        orig = getattr(owner, name)
        setattr(owner, name, wrapper_factory(orig))
        self._undo.append((owner, name, orig))

    def __enter__(self):
        counter = self
        line_mod = importlib.import_module(self.pkg.__name__ + "._line")
        adam_mod = importlib.import_module(self.pkg.__name__ + ".optim._adam")
        sls_mod = importlib.import_module(self.pkg.__name__ + ".optim.sls")
        if hasattr(line_mod, "flat_buffer"):
            def fb(orig):
                def wrapper(tensors):
                    out = orig(tensors)
                    counter.current += sum(t.numel() for t in out[1])
                    return out
                return wrapper
            self._patch(line_mod, "flat_buffer", fb)

            def denom(orig):
                def wrapper(obj):
                    out = orig(obj)
                    counter.current += sum(t.numel() for t in out)
                    return out
                return wrapper
            self._patch(adam_mod.AdamMoments, "denom", denom)

            def m_new(orig):
                def wrapper(obj, out=None):
                    res = orig(obj, out)
                    if out is None:
                        counter.current += sum(t.numel() for t in res)
                    return res
                return wrapper
            self._patch(adam_mod.AdamMoments, "m_new", m_new)
        else:
            def line_init(orig):
                def wrapper(obj, params, dirs):
                    orig(obj, params, dirs)
                    counter.current += sum(t.numel() for seg in obj.w0 for t in seg)
                return wrapper
            self._patch(line_mod.Line, "__init__", line_init)

            def moments(orig):
                def wrapper(*a, **k):
                    out = orig(*a, **k)
                    counter.current += sum(t.numel() for t in out[2])
                    return out
                return wrapper
            self._patch(adam_mod, "adam_moments", moments)
            sls_mod.adam_moments = adam_mod.adam_moments
            self._undo.append((sls_mod, "adam_moments", self._undo[-1][2]))
        return self

    def end_step(self):
        self.peak = max(self.peak, self.current)
        self.current = 0

    def __exit__(self, *exc):
        for owner, name, orig in reversed(self._undo):
            setattr(owner, name, orig)
        self._undo = []


def load_ref(src: str):
    """Import the autostep package found in ``src`` under the name ``autostep_ref``."""
    root = os.path.join(src, "autostep")
    spec = importlib.util.spec_from_file_location(
        "autostep_ref", os.path.join(root, "__init__.py"), submodule_search_locations=[root])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["autostep_ref"] = mod
    spec.loader.exec_module(mod)
    return mod


def ref_methods(ref) -> dict:
    """The closure methods of METHODS built from the reference package."""
    return {f"{name} (ref)": build for name, build in line_search_methods(ref).items()}


def state_numel(opt) -> int:
    n = 0
    for st in opt.state.values():
        if isinstance(st, dict):
            n += sum(v.numel() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    return n


FORWARD = "__forward__"  # one no-grad forward per batch, timed in the rotation for the floor


def run_model(problem_factory, names, steps, block, extra_methods, packages=None):
    methods = dict(METHODS)
    methods.update(extra_methods)
    packages = packages or {}
    setups = {}
    for name in names:
        prob = problem_factory()
        model = prob.model
        opt = methods[name](model.parameters())
        batches = prob.batch_list(steps, seed=0)
        setups[name] = (prob, model, opt, batches)
    prob = problem_factory()
    setups[FORWARD] = (prob, prob.model, None, prob.batch_list(steps, seed=0))
    n_params = sum(p.numel() for p in setups[names[0]][1].parameters())
    timed = [FORWARD] + list(names)
    cpu = {n: [] for n in timed}
    peaks = {}
    pos = 0
    diverged = {}
    nonfinite = tuple({autostep.NonFiniteLossError}
                      | {pkg.NonFiniteLossError for pkg in packages.values()})
    # warm-up block (not timed)
    for name in timed:
        try:
            _train_block(*setups[name], 0, min(block, steps))
        except nonfinite:
            diverged[name] = 0
        if _went_nonfinite(setups[name][2]):
            diverged[name] = 0
    pos = min(block, steps)
    while pos + block <= steps:
        for name in timed:
            if name in diverged:
                cpu[name].append(math.nan)
                continue
            t0 = time.process_time()
            try:
                _train_block(*setups[name], pos, pos + block)
            except nonfinite:  # timing stops; the blocks it finished still count
                diverged[name] = pos
                cpu[name].append(math.nan)
                continue
            if _went_nonfinite(setups[name][2]):
                # autostep's optimizers skip a step whose loss is not finite (and warn) instead of
                # raising: a diverged run would go on timing cheap skipped steps
                diverged[name] = pos
                cpu[name].append(math.nan)
                continue
            cpu[name].append((time.process_time() - t0) / block)
        pos += block
    floor = 1.0 + statistics.median(f / a for f, a in zip(cpu[FORWARD], cpu["Adam"]))
    rows = []
    for name in names:
        prob, model, opt, batches = setups[name]
        peaks[name] = 0
        if name not in diverged:
            with TransientCounter(packages.get(name)) as tc:
                try:
                    # at least 3 steps, and on until one of them searched (an amortised method's
                    # reused steps allocate nothing; its peak is a searched step's), at most 60
                    for k in range(60):
                        _train_block(prob, model, opt, batches, k, k + 1)
                        tc.end_step()
                        info = getattr(opt, "last_step", None) or {}
                        searched = bool(info.get("searched")) or "reused" not in info
                        tc.searched = tc.searched or searched
                        if k >= 2 and tc.searched:
                            break
                except nonfinite:
                    diverged[name] = pos
                peaks[name] = tc.peak
        ratios = [c / a for c, a in zip(cpu[name], cpu["Adam"]) if math.isfinite(c)] or [math.nan]
        sgd = [c / a for c, a in zip(cpu[name], cpu["SGD"]) if math.isfinite(c)] or [math.nan]
        fw = getattr(opt, "forwards", None)
        bw = getattr(opt, "backwards", None)
        if _PublishedSaLSA is not None and isinstance(opt, _PublishedSaLSA):
            fw, bw = opt.state.get("n_forwards"), opt.state.get("n_backwards")  # its own counters
        total_steps = max(1, opt_steps(opt, pos + 3))
        rows.append({
            "method": name,
            "cpu_ratio": statistics.median(ratios),
            "above_floor": statistics.median(ratios) - floor,
            "sgd_ratio": statistics.median(sgd),
            "ms_per_step": 1000 * statistics.median([c for c in cpu[name] if math.isfinite(c)] or [math.nan]),
            "diverged": diverged.get(name),
            "fwd": (fw / total_steps) if fw is not None else 1.0,
            "bwd": (bw / total_steps) if bw is not None else 1.0,
            "state": state_numel(opt) / n_params,
            "peak": (state_numel(opt) + peaks[name]) / n_params,
        })
    return rows, n_params, floor


def _went_nonfinite(opt) -> bool:
    """Whether ``opt`` skipped a step for a NaN/inf loss or gradient (autostep's optimizers count
    them in ``nonfinite_steps``; the timing of such a run after that point is not a step's)."""
    return bool(getattr(opt, "nonfinite_steps", 0))


def opt_steps(opt, default: int) -> int:
    """Steps the optimizer actually took (its own counter when it has one)."""
    return getattr(opt, "steps", None) or default


def _train_block(prob, model, opt, batches, start, end):
    loss_fn = prob.loss_fn
    for xb, yb in batches[start:end]:
        if opt is None:  # the floor's forward
            with torch.no_grad():
                loss_fn(model, (xb, yb))
        elif _PublishedSaLSA is not None and isinstance(opt, _PublishedSaLSA):
            opt.zero_grad(set_to_none=True)

            def closure(backwards=False, batch=(xb, yb)):  # the published package's convention
                loss = loss_fn(model, batch)
                if backwards:
                    loss.backward()
                return loss
            opt.step(closure)
        elif isinstance(opt, (torch.optim.Adam, torch.optim.SGD)):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, (xb, yb))
            loss.backward()
            opt.step()
        else:
            opt.step(lambda: loss_fn(model, (xb, yb)))


def print_table(title, rows, n_params, floor):
    print(f"\n## {title}  ({n_params} parameters)\n")
    print(f"floor 1 + forward / Adam step = {floor:.2f}\n")
    print("| method | CPU time / Adam | above floor | CPU time / SGD | ms/step | forwards/step | backwards/step | state / params | peak state / params |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        label = r["method"] + (f" (diverged in the block from step {r['diverged']}; only earlier blocks timed)" if r["diverged"] is not None else "")
        print(f"| {label} | {r['cpu_ratio']:.2f} | {r['above_floor']:+.2f} | {r['sgd_ratio']:.2f} | {r['ms_per_step']:.2f} | {r['fwd']:.2f} | "
              f"{r['bwd']:.2f} | {r['state']:.2f} | {r['peak']:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--models", nargs="+", default=["digits", "fmnist"],
                    choices=["digits", "fmnist", "fmnist_cnn", "char_gpt"],
                    help="fmnist_cnn and char_gpt (the bench's CNN and 29-tensor GPT) are not in the "
                         "issue's targets; they show the cost on models with more tensors")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="method names (Adam is always included)")
    ap.add_argument("--ref", metavar="SRC", help="another autostep source tree to time beside this one")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = ["Adam", "SGD"] + [m for m in args.methods if m not in ("Adam", "SGD")]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    extra, packages = {}, {}
    if args.ref:
        ref = load_ref(args.ref)
        available = ref_methods(ref)
        for m in list(names):
            if f"{m} (ref)" in available:
                names.append(f"{m} (ref)")
                extra[f"{m} (ref)"] = available[f"{m} (ref)"]
                packages[f"{m} (ref)"] = ref
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps per method in blocks of {args.block}"
          + (f"; '(ref)' rows: {args.ref}" if args.ref else ""))
    for model in args.models:
        if model == "digits":
            rows, n, floor = run_model(lambda: digits_mlp(seed=0), names, args.steps, args.block, extra, packages)
            print_table("digits MLP 64-64-10, batch 64", rows, n, floor)
        elif model in ("fmnist_cnn", "char_gpt"):
            if model == "fmnist_cnn" and load_fashion_mnist() is None:
                print("\n## fmnist_cnn: skipped (apt-get install dataset-fashion-mnist)")
                continue
            factory = lambda name=model: build_problem(name, 0)  # noqa: E731
            rows, n, floor = run_model(factory, names, args.steps, args.block, extra, packages)
            print_table(f"{model} (the bench's problem)", rows, n, floor)
        else:
            if load_fashion_mnist() is None:
                print("\n## Fashion-MNIST MLP: skipped (apt-get install dataset-fashion-mnist)")
                continue
            factory = lambda: fmnist_mlp(seed=0)  # noqa: E731
            rows, n, floor = run_model(factory, names, args.steps, args.block, extra, packages)
            print_table("Fashion-MNIST MLP 784-256-128-10, batch 128", rows, n, floor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
