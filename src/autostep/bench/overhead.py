"""The controlled overhead measurement: every method stepped in turn, in one process, on one problem.

Per-run timings come from different worker processes on a shared machine, so their ratios carry the
machine's noise.  Here every method trains its own copy of one problem (same initialisation, same
batches), in blocks of ``block`` steps taken round-robin, so a drift of the machine hits all methods
alike; the first block of each method is a discarded warm-up.  The figure reported per method is the
median over blocks of (its CPU time per step ÷ Adam's in the same round): the number to quote for
"CPU time per step relative to Adam", as ``benchmarks/overhead.py`` measures it for the optimizers.

Selectors and tuned baselines are timed on their training optimizer (their search and tuning are
counted separately, as compute, in the report); a method that diverges stops being timed.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from .. import registry
from .stepper import Stepper
from .streams import train_batches
from .tasks import build_problem

__all__ = ["measure_overhead", "load_or_measure"]


def measure_overhead(problem: str, methods: Sequence[str], blocks: int = 6, block: int = 20, seed: int = 0,
                     data_dir: Optional[str] = None, lrs: Optional[dict] = None,
                     clock: Callable[[], float] = time.process_time) -> dict:
    """CPU time per step of every method relative to Adam, measured round-robin in this process.

    ``lrs`` maps a tuned method to its chosen peak rate (default 1e-3).  Returns a JSON-able dict
    with ``rows``: ``method``, ``ratio`` (median over rounds of the per-round ratio to Adam),
    ``ms_per_step``, ``forwards_per_step``, ``rounds`` (timed rounds) and ``note``.
    """
    if blocks < 1 or block < 1:
        raise ValueError(f"blocks and block must be >= 1, got blocks={blocks}, block={block}")
    torch.set_num_threads(1)
    names = ["Adam"] + [m for m in methods if m != "Adam"]
    total = (blocks + 1) * block
    lrs = lrs or {}
    setups, notes = {}, {}
    for m in names:
        spec = registry.get(m)
        if spec.missing_reason():
            notes[m] = spec.missing_reason()
            continue
        task = build_problem(problem, seed, data_dir)
        try:
            st = Stepper(task, spec, seed, total, peak_lr=lrs.get(m) or 1e-3)
        except Exception as exc:  # reported, not raised: one broken method does not stop the table
            notes[m] = f"could not be built: {type(exc).__name__}: {exc}"
            continue
        setups[m] = (st, list(train_batches(task, total, seed)))
    times = {m: [] for m in setups}
    alive = set(setups)
    for r in range(blocks + 1):
        for m in list(setups):
            if m not in alive:
                continue
            st, batches = setups[m]
            t0 = clock()
            ok = True
            for t in range(r * block, (r + 1) * block):
                try:
                    value = st.step(t, batches[t])
                except Exception as exc:
                    notes[m] = f"stopped at step {t}: {type(exc).__name__}: {exc}"
                    ok = False
                    break
                if not math.isfinite(value):
                    notes[m] = f"diverged at step {t}; earlier rounds timed"
                    ok = False
                    break
            elapsed = (clock() - t0) / block
            if not ok:
                alive.discard(m)
                continue
            if r > 0:  # round 0 is the warm-up
                times[m].append((r, elapsed))
    adam = dict(times.get("Adam", []))
    rows = []
    for m in names:
        if m not in setups:
            rows.append({"method": m, "ratio": math.nan, "ms_per_step": math.nan,
                         "forwards_per_step": math.nan, "rounds": 0, "note": notes.get(m, "")})
            continue
        st = setups[m][0]
        ratios = [e / adam[r] for r, e in times[m] if adam.get(r)]
        fw = getattr(st.opt, "forwards", None)
        done = len(times[m]) * block + block
        rows.append({
            "method": m,
            "ratio": statistics.median(ratios) if ratios else math.nan,
            "ms_per_step": 1000 * statistics.median([e for _, e in times[m]]) if times[m] else math.nan,
            "forwards_per_step": (fw / done) if isinstance(fw, (int, float)) else 1.0,
            "rounds": len(times[m]),
            "note": notes.get(m, ""),
        })
    return {"problem": problem, "blocks": blocks, "block": block, "seed": seed, "rows": rows,
            "clock": "process CPU", "lrs": {k: v for k, v in lrs.items() if k in names}}


def load_or_measure(out_dir: str, problem: str, methods: Sequence[str], **kw) -> dict:
    """:func:`measure_overhead`, reused from ``out_dir/overhead.json`` when it was measured with the
    same problem, methods and settings (an interrupted bench does not measure it twice)."""
    path = os.path.join(out_dir, "overhead.json")
    want = {"problem": problem, "methods": list(methods),
            **{k: v for k, v in kw.items() if k in ("blocks", "block", "seed", "lrs")}}
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("request") == want:
                return data
        except (OSError, ValueError):
            pass
    data = measure_overhead(problem, methods, **kw)
    data["request"] = want
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
    return data
