"""One benchmark run (method × problem × seed) and the metrics computed from it.

A run trains for exactly ``steps`` optimizer steps (selectors spend part of that budget on their
search, at most 10%: :mod:`autostep.bench.selectors`), on one torch thread, with a
:class:`~autostep.bench.stepper.Stepper`, and returns a JSON-able dict:

* ``train_loss`` -- final loss on the whole training set (a suboptimality where the optimum is known),
  ``val_loss``, ``test_metric``;
* ``mean_log_loss`` -- the slides' ``Σ_t log(l_t − l*) / T``: over the mini-batch losses, or, where the
  optimum is known exactly, over the exact suboptimality at 50 checkpoints; after a divergence every
  remaining term is charged ``log(l_0 − l*)`` (no progress from the start);
* ``curve`` -- up to 200 points of (step, EMA of the training loss, step size, CPU seconds);
* ``cpu_per_step`` (seconds; timed after a discarded warm-up run of the same method and problem in
  the same process, so one-time start-up is never charged), ``forwards_per_step``,
  ``backwards_per_step``, ``state_bytes`` (tensors in the optimizer state) and ``param_bytes``,
  ``diverged`` (and at which step), ``search_steps`` and ``search_note`` (how a search was shrunk).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .. import registry
from .selectors import select_lr
from .stepper import Stepper
from .streams import train_batches
from .tasks import DataMissing, Task, build_problem

__all__ = ["RunConfig", "run_one", "mean_log_loss_charged", "run_path", "load_run", "save_run", "warm_up"]

EXPLODE = 1e3  # a loss above EXPLODE * max(l_0, 1) counts as divergence
CURVE_POINTS = 200
CHECKPOINTS = 50
#: steps of the discarded warm-up run each worker trains once per (problem, method) before timing
WARMUP_STEPS = 20
_WARMED: set = set()


@dataclass(frozen=True)
class RunConfig:
    problem: str
    method: str
    seed: int
    steps: int
    lr: Optional[float] = None  # peak rate of a tuned method's grid run / chosen rate
    role: str = "eval"  # "eval" or "tune"
    data_dir: Optional[str] = None
    device: str = "cpu"

    def key(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in self.method)
        lr = "" if self.lr is None else f"_lr{self.lr:.3e}"
        dev = "" if self.device == "cpu" else f"_{self.device.replace(':', '')}"
        return f"{self.problem}/{safe}/{self.role}_s{self.seed}{lr}_n{self.steps}{dev}"


def run_path(out_dir: str, cfg: RunConfig) -> str:
    return os.path.join(out_dir, "runs", cfg.key() + ".json")


#: what the report reads from every finished run; a cached file without one of them is re-run
_OK_KEYS = ("problem", "method", "seed", "lr", "train_loss", "val_loss", "test_metric", "curve",
            "diverged", "mean_log_loss", "cpu_per_step", "forwards_per_step", "backwards_per_step",
            "state_bytes", "param_bytes")


def load_run(out_dir: str, cfg: RunConfig) -> Optional[dict]:
    """The cached result of ``cfg``, or None when absent, unreadable, malformed (not a JSON object,
    another config, an ok run missing a field the report needs): such a run is simply re-run."""
    path = run_path(out_dir, cfg)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("config") != asdict(cfg) or "status" not in data:
        return None
    if data["status"] == "ok" and (any(k not in data for k in _OK_KEYS)
                                   or not isinstance(data["curve"], list)):
        return None
    return data


def save_run(out_dir: str, cfg: RunConfig, result: dict) -> None:
    path = run_path(out_dir, cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)  # atomic: an interrupted bench never leaves half a file


def mean_log_loss_charged(values: list, l0: float, diverged_at: Optional[int], total: int,
                          floor: float = 1e-12) -> float:
    """``Σ log(v_t) / T`` over ``total`` terms; terms from ``diverged_at`` on (or missing) are
    charged ``log(l0)``.  ``values`` are gaps ``l_t − l*`` (clamped below at ``floor``)."""
    charge = math.log(max(l0, floor))
    terms = []
    for t in range(total):
        if (diverged_at is not None and t >= diverged_at) or t >= len(values) or not math.isfinite(values[t]):
            terms.append(charge)
        else:
            terms.append(math.log(max(values[t], floor)))
    return sum(terms) / max(1, total)


def _state_bytes(opt) -> int:
    """Bytes of the tensors an optimizer keeps in its state (per-parameter dicts, or lists of
    tensors under string keys as the published SaLSa keeps them)."""
    def size(v) -> int:
        if torch.is_tensor(v):
            return v.numel() * v.element_size() if v.dim() > 0 else 0
        if isinstance(v, dict):
            return sum(size(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(size(x) for x in v)
        return 0

    inner = getattr(opt, "optimizer", opt)
    return size(dict(getattr(inner, "state", {})))


def _counter(opt, attr: str, key: str):
    """Forward/backward counters: autostep's attributes, or the published SaLSa's state keys."""
    value = getattr(opt, attr, None)
    if value is None and isinstance(getattr(opt, "state", None), dict):
        value = opt.state.get(key)
    return value


def warm_up(cfg: RunConfig) -> None:
    """Once per process and (problem, method, device): a discarded short run, so one-time costs
    (lazy kernel and autograd initialisation, first-call caches) are not charged to a timed run."""
    key = (cfg.problem, cfg.method, cfg.device)
    if key in _WARMED:
        return
    _WARMED.add(key)
    n = min(cfg.steps, WARMUP_STEPS)
    try:
        _train(build_problem(cfg.problem, cfg.seed, cfg.data_dir, cfg.device), registry.get(cfg.method),
               RunConfig(cfg.problem, cfg.method, cfg.seed, n, lr=cfg.lr or 1e-3, role="warmup",
                         data_dir=cfg.data_dir, device=cfg.device), warm=True)
    except Exception:  # the timed run reports the method's errors
        pass


def run_one(cfg: RunConfig, warmup: bool = True) -> dict:
    """Train one (problem, method, seed); never raises for a failing method (the error is recorded).

    ``warmup`` first trains a discarded short run of the same method and problem, once per process
    (see :func:`warm_up`), so timings exclude one-time start-up."""
    torch.set_num_threads(1)
    base = {"config": asdict(cfg), "problem": cfg.problem, "method": cfg.method, "seed": cfg.seed,
            "role": cfg.role, "lr": cfg.lr}
    spec = registry.get(cfg.method)
    reason = spec.missing_reason()
    if reason:
        return {**base, "status": "skipped", "reason": reason}
    if warmup:
        warm_up(cfg)
    try:
        task = build_problem(cfg.problem, cfg.seed, cfg.data_dir, cfg.device)
    except DataMissing as exc:
        return {**base, "status": "skipped", "reason": str(exc)}
    try:
        return {**base, "status": "ok", **_train(task, spec, cfg)}
    except Exception as exc:  # a method that crashes is a result, not a crashed benchmark
        return {**base, "status": "error", "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5)}


def _train(task: Task, spec, cfg: RunConfig, warm: bool = False) -> dict:
    steps = cfg.steps
    # CPU time on the CPU (robust to other load); on a GPU, wall time with synchronisation
    cuda = task.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(task.device)
        return clock()

    cpu0 = now()
    search_steps, peak_lr, search_note = 0, cfg.lr, ""
    if spec.kind == "selector" and not warm:
        peak_lr, search_steps, search_note = select_lr(spec, task, cfg)
    train_steps = max(0, steps - search_steps)
    st = Stepper(task, spec, cfg.seed, train_steps, peak_lr, total_steps=steps)
    opt, inner = st.opt, st.inner

    losses, gaps, diverged_at = [], [], None
    ema, curve_every = None, max(1, train_steps // CURVE_POINTS)
    check_every = max(1, train_steps // CHECKPOINTS)
    curve, l0 = [], None
    for t, batch in enumerate(train_batches(task, train_steps, cfg.seed)):
        value = st.step(t, batch)
        if l0 is None:
            l0 = value
        losses.append(value)
        if not math.isfinite(value) or value > EXPLODE * max(abs(l0), 1.0):
            diverged_at = t
            break
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        if task.exact_optimum and (t % check_every == 0 or t == train_steps - 1):
            st.eval_mode()
            gaps.append(task.evaluate("train")[0])
            st.train_mode()
        if t % curve_every == 0 or t == train_steps - 1:
            curve.append((t + search_steps, ema, st.current_lr(), now() - cpu0))
    cpu = now() - cpu0
    if warm:
        return {}
    st.eval_mode()
    if diverged_at is None:
        train_loss, _ = task.evaluate("train")
        val_loss, _ = task.evaluate("val")
        _, test_metric = task.evaluate("test")
    else:
        train_loss = val_loss = test_metric = math.nan
    if task.exact_optimum:
        start_gap = gaps[0] if gaps else (l0 or 1.0)
        n_terms = len(range(0, train_steps, check_every))
        mll = mean_log_loss_charged(gaps, start_gap, None if diverged_at is None else len(gaps), n_terms)
    elif train_steps == 0:  # the search used the whole budget
        mll = math.nan
    else:
        mll = mean_log_loss_charged(losses, l0 if l0 is not None else 1.0, diverged_at, train_steps)
    fw = _counter(opt, "forwards", "n_forwards")
    bw = _counter(opt, "backwards", "n_backwards")
    done = len(losses)
    own_search = getattr(opt, "search_steps", None)  # steps a method spends on its own scale search
    if not isinstance(own_search, int) or isinstance(own_search, bool):
        own_search = 0
    return {
        "steps": steps,
        "search_steps": search_steps + own_search,
        "search_note": search_note,
        "peak_lr": peak_lr,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "test_metric": test_metric,
        "metric_name": task.metric,
        "higher_is_better": task.higher_is_better,
        "optimum": task.optimum,
        "optimum_exact": task.exact_optimum,
        "mean_log_loss": mll,
        "diverged": diverged_at is not None,
        "diverged_at": diverged_at,
        "cpu_s": cpu,
        "clock": "wall (cuda synchronised)" if cuda else "process CPU",
        "cpu_per_step": cpu / max(1, done + search_steps),
        "forwards_per_step": (fw / max(1, done)) if fw is not None else 1.0,
        "backwards_per_step": (bw / max(1, done)) if bw is not None else 1.0,
        "state_bytes": _state_bytes(opt),
        "param_bytes": sum(p.numel() * p.element_size() for p in st.params),
        "curve": curve,
        "final_lr": st.current_lr(),
    }
