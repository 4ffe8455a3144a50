"""torch.compile(model) and mixed precision with autostep's line searches.

* ``compiled``: the model is compiled once; the first evaluation of a step (with grad) and the
  trials (under ``no_grad``) are the only two graphs, for loss-only and torch-style closures alike.
* ``fp16``: float16 autocast with a ``torch.amp.GradScaler``: ``opt.step(closure, grad_scaler=...)``
  then ``scaler.update()``; the closure returns the unscaled loss.
* ``bf16``: bfloat16 autocast needs nothing.

    python examples/compile_amp.py [--steps 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import autostep


def _problem(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 32, generator=g).to(device)
    y = (x @ torch.randn(32, 4, generator=g).to(device)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(64, 4)).to(device)
    return model, x, y


def compiled(method="SALSA", steps=6, style="loss", backend="inductor", device="cpu"):
    """Train a compiled model; returns (optimizer, losses)."""
    model, x, y = _problem(device)
    cmodel = torch.compile(model, backend=backend)
    opt = autostep.create(method, model.parameters())
    losses = []
    for t in range(steps):
        xb, yb = x[32 * (t % 8):32 * (t % 8 + 1)], y[32 * (t % 8):32 * (t % 8 + 1)]
        if style == "loss":
            def closure():
                return nn.functional.cross_entropy(cmodel(xb), yb)
        else:
            def closure():
                opt.zero_grad()
                loss = nn.functional.cross_entropy(cmodel(xb), yb)
                loss.backward()
                return loss
        losses.append(float(opt.step(closure)))
    return opt, losses


def fp16(method="SALSA", steps=6, device="cpu", init_scale=2.0 ** 16, growth_interval=2000):
    """float16 autocast + GradScaler; returns (optimizer, scaler, losses, scales)."""
    model, x, y = _problem(device)
    opt = autostep.create(method, model.parameters())
    scaler = torch.amp.GradScaler(device, init_scale=init_scale, growth_interval=growth_interval)
    losses, scales = [], []
    for t in range(steps):
        xb, yb = x[32 * (t % 8):32 * (t % 8 + 1)], y[32 * (t % 8):32 * (t % 8 + 1)]

        def closure():
            with torch.autocast(device, dtype=torch.float16):
                return nn.functional.cross_entropy(model(xb), yb)
        losses.append(float(opt.step(closure, grad_scaler=scaler)))
        scaler.update()
        scales.append(scaler.get_scale())
    return opt, scaler, losses, scales


def bf16(method="SALSA", steps=6, device="cpu"):
    model, x, y = _problem(device)
    opt = autostep.create(method, model.parameters())
    losses = []
    for t in range(steps):
        xb, yb = x[32 * (t % 8):32 * (t % 8 + 1)], y[32 * (t % 8):32 * (t % 8 + 1)]

        def closure():
            with torch.autocast(device, dtype=torch.bfloat16):
                return nn.functional.cross_entropy(model(xb), yb)
        losses.append(float(opt.step(closure)))
    return opt, losses


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from torch._dynamo.testing import CompileCounter

    for style in ("loss", "torch"):
        cnt = CompileCounter()
        torch._dynamo.reset()
        opt, losses = compiled(steps=args.steps, style=style, backend=cnt, device=args.device)
        print(f"compile ({style}-style closure): {cnt.frame_count} graphs for {args.steps} steps, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    torch._dynamo.reset()
    opt, losses = compiled(steps=args.steps, device=args.device)
    print(f"compile (inductor): loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    opt, scaler, losses, scales = fp16(steps=args.steps, device=args.device)
    print(f"fp16 + GradScaler: loss {losses[0]:.3f} -> {losses[-1]:.3f}, scale {scales[-1]:g}, "
          f"skipped {opt.skipped_steps}")
    opt, losses = bf16(steps=args.steps, device=args.device)
    print(f"bf16: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
