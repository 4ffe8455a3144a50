"""Lightning, automatic optimization, with gradient clipping and gradient accumulation.

autostep's line searches take Lightning's own (torch-style) closure: no manual optimization, no
adapter.  Run: ``python examples/lightning_automatic.py`` (a few seconds on a CPU).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import autostep


def make_data(n=256, d=16, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, k, generator=g)).argmax(1)
    return torch.utils.data.TensorDataset(x, y)


def main(method: str = "SALSA", max_steps: int = 8, accumulate: int = 2, clip: float = 1.0,
         quiet: bool = True):
    import lightning as L

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                     nn.Dropout(0.1), nn.Linear(32, 4))
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return autostep.create(method, self.parameters())

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    torch.manual_seed(0)
    model = Classifier()
    loader = torch.utils.data.DataLoader(make_data(), batch_size=32, shuffle=True)
    trainer = L.Trainer(max_steps=max_steps, gradient_clip_val=clip, accumulate_grad_batches=accumulate,
                        logger=False, enable_checkpointing=False, enable_progress_bar=not quiet,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, loader)
    return model, trainer


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", default="SALSA")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    model, trainer = main(args.method, args.steps, quiet=False)
    opt = trainer.optimizers[0]
    print(f"{args.method}: {opt.steps} steps, lr {opt.param_groups[0]['lr']:.3g}, "
          f"{opt.forwards / max(opt.steps, 1):.2f} forwards/step, "
          f"{opt.backwards / max(opt.steps, 1):.2f} backwards/step, "
          f"first/last micro-batch loss {model.losses[0]:.3f}/{model.losses[-1]:.3f}")
