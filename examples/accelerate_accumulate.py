"""accelerate with gradient accumulation: the backward runs outside ``step()`` (inside
``accelerator.accumulate``), and the loss-only closure passed to ``step`` only measures the loss
along the accumulated direction.  No adapter.

    python examples/accelerate_accumulate.py [--steps 20]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import autostep


def main(method: str = "SALSA", batches: int = 8, accumulate: int = 2, seed: int = 0):
    """Run ``batches`` micro-batches; returns (model, optimizer, list of losses)."""
    from accelerate import Accelerator

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16,
                                         shuffle=True, generator=g)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    accelerator = Accelerator(gradient_accumulation_steps=accumulate, cpu=True)
    opt = autostep.create(method, model.parameters())
    model, aopt, loader = accelerator.prepare(model, opt, loader)
    losses = []
    def forever():
        while True:
            yield from loader

    it = forever()
    for _ in range(batches):
        xb, yb = next(it)
        with accelerator.accumulate(model):
            loss = nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            aopt.step(lambda: nn.functional.mse_loss(model(xb), yb))
            aopt.zero_grad()
        losses.append(loss.item())
    return model, opt, losses


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    model, opt, losses = main(batches=2 * args.steps)
    print(f"{opt.steps} optimizer steps for {len(losses)} micro-batches; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; {opt.forwards / opt.steps:.2f} forwards/step")
