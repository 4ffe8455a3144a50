"""The Hugging Face Trainer with an autostep line search: a tiny BERT classifier and a tiny GPT-2
language model, both built from a config (no download), on random tokens.

The Trainer calls ``optimizer.step()`` without a closure; ``autostep.integrations.hf.attach`` is the
one line that lets the line search evaluate the loss.  The Trainer's defaults stay on: linear
schedule (it caps the step size), ``max_grad_norm=1.0``, here with gradient accumulation.

    python examples/hf_trainer.py [--steps 30] [--method SALSA]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import autostep
from autostep.integrations import hf


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    return BertForSequenceClassification(cfg)


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(cfg)


def dataset(kind: str, n: int = 64, length: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, length), generator=g)
    if kind == "bert":  # label: parity of the first token
        return [{"input_ids": ids[i], "labels": ids[i, 0] % 2} for i in range(n)]
    ids[:, 1::2] = (ids[:, 0::2] + 1) % 64  # learnable: every odd token follows its predecessor
    return [{"input_ids": ids[i], "labels": ids[i]} for i in range(n)]


def main(kind: str = "bert", method: str = "SALSA", steps: int = 4, accumulate: int = 2,
         outdir: str | None = None, **opt_kwargs):
    """Train ``steps`` optimizer steps; returns (trainer, optimizer)."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = tiny_bert() if kind == "bert" else tiny_gpt2()
    opt = autostep.create(method, model.parameters(), **opt_kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=outdir or tmp, max_steps=steps, per_device_train_batch_size=8,
                                 gradient_accumulation_steps=accumulate, report_to=[],
                                 save_strategy="no", logging_strategy="no", use_cpu=True,
                                 disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=dataset(kind), optimizers=(opt, None))
        hf.attach(trainer)  # the one line
        trainer.train()
    return trainer, opt


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--method", default="SALSA")
    args = ap.parse_args()
    for kind in ("bert", "gpt2"):
        trainer, opt = main(kind, args.method, args.steps)
        print(f"{kind}: {opt.steps} steps, {opt.forwards / opt.steps:.2f} forwards/step inside step(), "
              f"last lr {opt.last_step.get('step_sizes', [opt.param_groups[0]['lr']])[0]:.3g}, "
              f"last loss {opt.last_step['loss']:.3f}")
