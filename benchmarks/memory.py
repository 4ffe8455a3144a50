"""Peak memory inside one optimizer step, measured from the allocator, and the CPU cost of
``memory="lean"`` against the default ``memory="fast"``, in one process.

Memory: glibc's ``mallinfo2()`` (bytes in use: ``uordblks + hblkhd``; torch's CPU allocator
takes its tensors from malloc) is sampled before and after every aten op the step dispatches
(a ``TorchDispatchMode``), so the peak of live bytes inside ``step()`` is seen at the op that
reaches it.  The model is the Fashion-MNIST MLP architecture (784-256-128-10, 235k parameters)
on random batches of 4 rows, so activations are ~2 % of the parameters; ``.grad`` is ``None``
before the measured step (``zero_grad(set_to_none=True)``).  Printed per method, in units of the
parameters' bytes: the persistent state (tensors in ``optimizer.state``), the transient peak (peak
live bytes inside ``step()`` minus those before it), the part of it that is the ``.grad`` tensors
the step's backward allocated, and the optimizer's peak ``state + transient - .grad``.  SGD-direction SLS, whose only
transient buffer is ``w0``, calibrates the method (expect ~1.0 transient).

Time: methods interleaved in blocks of steps on one torch thread (CPU time per step, median of
the per-block ratios lean / fast), batch 128 as in ``overhead.py``'s fmnist_mlp shape.

Run:  python benchmarks/memory.py [--steps 400] [--block 50]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import autostep

METHODS = ["AdamSLS", "SALSA", "ALSALS", "PLASLS"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def live_bytes() -> int:
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


class PeakMode(TorchDispatchMode):
    """Samples the live bytes around every op."""

    def __init__(self):
        super().__init__()
        self.peak = live_bytes()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.peak = max(self.peak, live_bytes())
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, live_bytes())
        return out


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def build(name: str, params):
    if name == "SLS":
        return autostep.SLS(params)
    base, _, memory = name.partition(" ")
    return getattr(autostep, base)(params, **({"memory": memory} if memory else {}))


def batches(n, rows, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, 784, generator=g), torch.randint(0, 10, (rows,), generator=g))
            for _ in range(n)]


def state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if torch.is_tensor(v) and v.dim() > 0)


def measure_peak(name: str, steps: int = 4) -> tuple[float, float]:
    net = model()
    opt = build(name, net.parameters())
    pbytes = sum(p.numel() * p.element_size() for p in net.parameters())
    peaks = []
    for x, y in batches(steps, 4):
        closure = lambda: nn.functional.cross_entropy(net(x), y)  # noqa: E731
        # no gradient before the step (as after zero_grad(set_to_none=True); a loss-only step
        # releases the optimizer's own previous ones itself before its forward), so every
        # gradient after it was allocated inside it
        opt.zero_grad(set_to_none=True)
        before = live_bytes()
        with PeakMode() as pm:
            opt.step(closure)
        fresh = sum(p.grad.numel() * p.grad.element_size() for p in net.parameters()
                    if p.grad is not None)
        peaks.append((pm.peak - before, fresh))
    # the first step also creates the state; the later ones show the steady transient peak
    tr, grads = max(peaks[1:])
    return state_bytes(opt) / pbytes, tr / pbytes, grads / pbytes


def time_ratio(names: list, steps: int, block: int) -> dict:
    data = batches(steps, 128, seed=2)
    setups = {}
    for n in names:
        net = model()
        setups[n] = (net, build(n, net.parameters()))
    cpu = {n: [] for n in names}
    for start in range(0, steps, block):
        for n in names:
            net, opt = setups[n]
            t0 = time.process_time()
            for x, y in data[start:start + block]:
                opt.step(lambda: nn.functional.cross_entropy(net(x), y))
            if start:  # the first block warms up
                cpu[n].append((time.process_time() - t0) / block)
    return cpu


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; memory in units of the parameters' bytes\n")
    print("| method | memory | state | transient peak in step | of it .grad | "
          "optimizer peak (state + transient - .grad) |")
    print("|---|---|---|---|---|---|")
    for m, mem in [("SLS", "-")] + [(m, mem) for m in args.methods for mem in ("fast", "lean")]:
        st, tr, gr = measure_peak(m if mem == "-" else f"{m} {mem}")
        label = "SLS (calibration: w0 only)" if m == "SLS" else m
        print(f"| {label} | {mem} | {st:.2f} | {tr:.2f} | {gr:.2f} | {st + tr - gr:.2f} |")
    names = [f"{m} {mem}" for m in args.methods for mem in ("fast", "lean")]
    cpu = time_ratio(names, args.steps, args.block)
    print(f"\nCPU time per step, {args.steps} steps of batch 128 in blocks of {args.block}, "
          "methods interleaved (median over blocks)\n")
    print("| method | fast ms/step | lean ms/step | lean / fast |")
    print("|---|---|---|---|")
    for m in args.methods:
        f, l_ = cpu[f"{m} fast"], cpu[f"{m} lean"]
        ratio = statistics.median(b / a for a, b in zip(f, l_))
        print(f"| {m} | {1000 * statistics.median(f):.2f} | {1000 * statistics.median(l_):.2f} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
