"""Summarise ``autostep bench`` output folders into the Autostep design table.

For every method and problem: median final train loss as a multiple of grid-tuned Adam-cosine's
(same seeds), test-metric difference in points (char_gpt: test-loss ratio, ×), the worst train-loss ratio
over the five real-data problems, divergences, and forwards
per step.  Usage::

    python benchmarks/autostep_designs.py OUT_DIR [OUT_DIR ...] [--methods A B ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
from collections import defaultdict

REF = "Adam-cosine-tuned"
REAL = ("digits_mlp", "fmnist_logreg", "fmnist_mlp", "fmnist_cnn", "char_gpt")


def load(dirs):
    runs = []
    for d in dirs:
        for path in glob.glob(os.path.join(d, "runs", "*", "*", "eval_*.json")):
            with open(path) as f:
                r = json.load(f)
            if r.get("role") == "eval":
                runs.append(r)
    return runs


def table(runs, methods=None):
    by = defaultdict(dict)  # (problem, method) -> seed -> run
    for r in runs:
        by[(r["problem"], r["method"])][r["seed"]] = r
    problems = sorted({p for p, _ in by}, key=lambda p: (p not in REAL, p))
    methods = methods or sorted({m for _, m in by})
    lines = ["| method | " + " | ".join(problems) + " | worst real-data ratio |",
             "|---|" + "---|" * (len(problems) + 1)]
    for m in methods:
        cells, logs = [], []
        for p in problems:
            ref, mine = by.get((p, REF), {}), by.get((p, m), {})
            seeds = sorted(set(ref) & set(mine))
            if not seeds:
                cells.append("–")
                continue
            ratios, diffs, div = [], [], 0
            for s in seeds:
                a, b = ref[s], mine[s]
                if b.get("status") != "ok" or b.get("diverged"):
                    div += 1
                    continue
                ratios.append(b["train_loss"] / a["train_loss"] if a["train_loss"] > 0 else math.nan)
                if not b.get("higher_is_better", True):  # char_gpt: test loss, as a ratio
                    diffs.append(b["test_metric"] / a["test_metric"])
                else:
                    diffs.append(100 * (b["test_metric"] - a["test_metric"]))
            if not ratios:
                cells.append(f"diverged {div}/{len(seeds)}")
                continue
            r, d = statistics.median(ratios), statistics.median(diffs)
            if p in REAL:
                logs.append(r)
            extra = f" / ×{d:.3f}" if not mine[seeds[0]].get("higher_is_better", True) else f" / {d:+.1f}"
            if p in ("quadratic", "matfac", "matfac_k4"):
                extra = ""
            cells.append(f"{r:.2f}{extra}" + (f" ({div} div)" if div else ""))
        geo = f"{max(logs):.2f}" if logs else "–"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {geo} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--methods", nargs="+")
    a = ap.parse_args()
    print(table(load(a.dirs), a.methods))


if __name__ == "__main__":
    main()
