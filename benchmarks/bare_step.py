"""What the line-search hot path could cost at best in eager PyTorch: bare steps against ours.

Issue 13 asks for every-step Armijo searches within 0.1 of the floor ``1 + forward / Adam step``
and LABPAL within 1.1x SGD.  This script separates what the *math* of a step costs in eager
PyTorch from what autostep's machinery around it costs, on the same batches, interleaved:

* ``bare SALSA``: SALSA's step written as straight-line code -- Adam moments with beta1 = 0 as
  the search direction, ``<g, d>``, the smoothed Armijo test, backtracking, the momentum update
  from ``w0`` -- the same foreach/per-tensor ops as :class:`autostep.SALSA` (so the same memory
  passes), and nothing else: no closure conventions, no generator replay, no buffer restore, no
  undo record, no checks, no read-outs.  Its step sizes follow the same rules (growth, backtrack
  0.9, c = 0.5, smooth 0.9), so it takes about as many trials.
* ``bare SALSA + evaluator``: the same, with the closure evaluated through autostep's
  :class:`~autostep._closure.ClosureEvaluator` (loss-only and torch-style closures told apart,
  ``.grad`` kept out of the closure's reach, generators replayed and module buffers restored for
  each trial, one host read for the start loss and ``<g, d>``): the price of those guarantees.
* ``bare NSGD`` / ``+ evaluator``: LABPAL's plain update step (``w -= step * g / ||g||``, the
  norm read with the loss), without and with the evaluator, against SGD.
* ``SALSA``, ``LABPAL nsgd``: the library.

Printed: CPU time per step (``time.process_time``, median over blocks of the per-block ratio to
Adam or SGD measured in the same rotation), the floor, and trials per step.  Bare steps are
measurement code, not a product: they give up every guarantee the library documents.

Run:  python benchmarks/bare_step.py [--problem digits fmnist] [--steps 800] [--block 50]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import autostep
from autostep._closure import ClosureEvaluator
from autostep._closure.buffers import model_buffers
from autostep.bench.tasks import digits_mlp, fmnist_mlp, load_fashion_mnist
from autostep.distributed import Reducer


def first_evaluation(opt, closure):
    """Loss and gradients at the start point: through autostep's evaluator (``opt.evaluator``,
    the start loss left on the device for ``read_start``) or as a plain loop would.  Returns
    ``(evaluator or None, loss)``."""
    ps = opt.ps
    if opt.evaluator:
        ev = ClosureEvaluator(closure, ps, opt.reducer, buffers=model_buffers(opt, ps), owner=opt)
        return ev, ev.first(read=False)
    for p in ps:
        p.grad = None
    with torch.enable_grad():
        loss = closure()
        loss.backward()
    return None, loss


class BareSALSA:
    """SALSA's arithmetic in straight-line eager code (see the module docstring)."""

    def __init__(self, params, lr=0.1, betas=(0.9, 0.999), eps=1e-8, c=0.5, smooth=0.9,
                 growth_steps=500, max_lr=1.0, evaluator=False):
        self.ps = list(params)
        self.lr, (self.b1, self.b2), self.eps, self.c, self.beta = lr, betas, eps, c, smooth
        self.growth, self.max_lr = 2.0 ** (1.0 / growth_steps), max_lr
        self.m = [torch.zeros_like(p) for p in self.ps]
        self.v = [torch.zeros_like(p) for p in self.ps]
        self.k, self.h_ema, self.s_ema, self.trials = 0, 0.0, 0.0, 0
        self.evaluator = evaluator
        self.reducer = Reducer()

    @torch.no_grad()
    def step(self, closure):
        ps, k = self.ps, self.k + 1
        ev, loss = first_evaluation(self, closure)
        gs = [p.grad for p in ps]
        # w0's buffer: scratch for g / denom first
        flat = torch.empty(sum(p.numel() for p in ps), dtype=ps[0].dtype)
        w0, off = [], 0
        for p in ps:
            w0.append(flat[off:off + p.numel()].view(p.shape))
            off += p.numel()
        den = torch._foreach_mul(self.v, self.b2)
        torch._foreach_addcmul_(den, gs, gs, value=1 - self.b2)
        torch._foreach_sqrt_(den)
        torch._foreach_div_(den, math.sqrt(1 - self.b2 ** k))
        torch._foreach_add_(den, self.eps)
        s = torch.stack([torch.vdot(g.reshape(-1), torch.div(g, d, out=b).reshape(-1))
                         for g, d, b in zip(gs, den, w0)]).sum()
        if self.evaluator:
            s, = ev.read_start(s.reshape(1))
            f0 = ev.loss0
        else:
            f0, s = torch.stack([loss.detach().double(), s.double()]).tolist()
        torch._foreach_copy_(w0, ps)
        s_ema = self.beta * self.s_ema + (1 - self.beta) * s
        eta = min(self.lr * self.growth, self.max_lr)
        for t in range(50):
            if t == 0:
                torch._foreach_addcdiv_(ps, gs, den, value=-eta)
            else:
                for p, w, g, d in zip(ps, w0, gs, den):
                    torch.addcdiv(w, g, d, value=-eta, out=p)
            self.trials += 1
            f = ev.trial() if self.evaluator else float(closure())
            h = self.beta * self.h_ema + (1 - self.beta) * (f0 - f)
            if h >= self.c * eta * s_ema:
                self.h_ema = h
                break
            eta *= 0.9
        if self.evaluator:
            ev.finish()
        self.k, self.s_ema, self.lr = k, s_ema, eta
        torch._foreach_lerp_(self.m, gs, 1 - self.b1)
        torch._foreach_mul_(self.v, self.b2)
        torch._foreach_addcmul_(self.v, gs, gs, value=1 - self.b2)
        bc1 = 1 - self.b1 ** k
        for p, w, m, d in zip(ps, w0, self.m, den):
            torch.addcdiv(w, m, d, value=-eta / bc1, out=p)
        return loss


class BareNSGD:
    """LABPAL's plain update ``w -= step * g / ||g||`` (fixed step: the timing, not the rule)."""

    def __init__(self, params, step=0.05, evaluator=False):
        self.ps, self.step_len, self.evaluator, self.reducer = list(params), step, evaluator, Reducer()

    @torch.no_grad()
    def step(self, closure):
        ps = self.ps
        ev, loss = first_evaluation(self, closure)
        gs = [p.grad for p in ps]
        sq = torch.stack(torch._foreach_norm(gs)).double().pow(2).sum()
        if self.evaluator:
            sq, = ev.read_start(sq.reshape(1), trials=False)
            ev.finish()
        else:
            _, sq = torch.stack([loss.detach().double(), sq]).tolist()
        torch._foreach_add_(ps, gs, alpha=-self.step_len / math.sqrt(sq))
        return loss


METHODS = {
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05),
    "bare SALSA": lambda p: BareSALSA(p),
    "bare SALSA + evaluator": lambda p: BareSALSA(p, evaluator=True),
    "SALSA": lambda p: autostep.SALSA(p),
    "bare NSGD": lambda p: BareNSGD(p),
    "bare NSGD + evaluator": lambda p: BareNSGD(p, evaluator=True),
    "LABPAL nsgd": lambda p: autostep.LABPAL(p, mode="nsgd"),
}
FORWARD = "no-grad forward"


def run(factory, steps: int, block: int) -> dict:
    setups = {}
    for name, make in METHODS.items():
        prob = factory(seed=0)
        setups[name] = (prob, prob.model, make(prob.model.parameters()), prob.batch_list(steps, seed=0))
    prob = factory(seed=0)
    setups[FORWARD] = (prob, prob.model, None, prob.batch_list(steps, seed=0))
    times = {n: [] for n in setups}
    for pos in range(0, steps - block + 1, block):
        for name, (prob, model, opt, batches) in setups.items():
            t0 = time.process_time()
            for xb, yb in batches[pos:pos + block]:
                if opt is None:
                    with torch.no_grad():
                        prob.loss_fn(model, (xb, yb))
                elif isinstance(opt, (torch.optim.Adam, torch.optim.SGD)):
                    opt.zero_grad(set_to_none=True)
                    prob.loss_fn(model, (xb, yb)).backward()
                    opt.step()
                else:
                    opt.step(lambda: prob.loss_fn(model, (xb, yb)))
            times[name].append((time.process_time() - t0) / block)
    out = {}
    for name, ts in times.items():
        ts = ts[1:]  # the first block warms up
        opt = setups[name][2]
        trials = getattr(opt, "trials", None)
        out[name] = {
            "ms": 1000 * statistics.median(ts),
            "adam": statistics.median(a / b for a, b in zip(ts, times["Adam"][1:])),
            "sgd": statistics.median(a / b for a, b in zip(ts, times["SGD"][1:])),
            "trials": None if trials is None else trials / steps,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", nargs="+", choices=["digits", "fmnist"], default=["digits", "fmnist"])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--block", type=int, default=50)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps in blocks of {args.block}")
    for problem in args.problem:
        if problem == "fmnist" and load_fashion_mnist() is None:
            print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); skipped")
            continue
        factory = fmnist_mlp if problem == "fmnist" else digits_mlp
        res = run(factory, args.steps, args.block)
        floor = 1.0 + res[FORWARD]["adam"]
        print(f"\n## {problem}: floor 1 + forward / Adam = {floor:.2f}\n")
        print("| method | ms/step | / Adam | above floor | / SGD | trials/step |")
        print("|---|---|---|---|---|---|")
        for name, r in res.items():
            if name == FORWARD:
                continue
            trials = "" if r["trials"] is None else f"{r['trials']:.2f}"
            print(f"| {name} | {r['ms']:.3f} | {r['adam']:.2f} | {r['adam'] - floor:+.2f} | "
                  f"{r['sgd']:.2f} | {trials} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
