"""One benchmark run (method × problem × seed) and the metrics computed from it.

A run trains for exactly ``steps`` optimizer steps (selectors spend part of that budget on their
search, at most 10%: :data:`SEARCH_FRACTION`), on one torch thread, and returns a JSON-able dict:

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

import contextlib
import io
import json
import math
import os
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .. import registry
from .problems import DataMissing, Task, build_problem

__all__ = ["RunConfig", "run_one", "mean_log_loss_charged", "cosine_factor", "schedule_factor", "run_path",
           "load_run", "Stepper", "search_budget", "SEARCH_FRACTION"]

EXPLODE = 1e3  # a loss above EXPLODE * max(l_0, 1) counts as divergence
CURVE_POINTS = 200
CHECKPOINTS = 50


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


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


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


#: a selector's search may spend at most this fraction of a run's step budget (issue 9's protocol)
SEARCH_FRACTION = 0.10
#: steps of the discarded warm-up run each worker trains once per (problem, method) before timing
WARMUP_STEPS = 20
_WARMED: set = set()


def search_budget(steps: int) -> int:
    """Training steps a selector may spend on its search within a run of ``steps`` steps."""
    return int(math.floor(SEARCH_FRACTION * steps))


def _select_lr(spec, task: Task, cfg: RunConfig) -> tuple[float, int, str]:
    """Run a selector's LR search within :data:`SEARCH_FRACTION` of the run's budget.

    Returns ``(lr, training steps spent, note)``; the note says how the search was shrunk to fit,
    or is empty when the method's usual search fits.  A budget too small for any search falls back
    to Adam's 1e-3 and says so."""
    kind = spec.options.get("selector")
    model = task.model
    budget = search_budget(cfg.steps)
    if kind == "find_lr":
        from ..finder import NoViableRateError, find_lr

        if budget < 4:  # find_lr needs two trials of two steps
            return 1e-3, 0, (f"no search fits in {budget} steps (10% of {cfg.steps}); "
                             f"trained at Adam's 1e-3")
        # as the finder's calibration runs it: the schedule's peak rate within budget_steps
        train = task.probe_batches(budget, cfg.seed)
        val = task.probe_batches(4, cfg.seed + 1)
        try:
            res = find_lr(model, lambda p, lr: torch.optim.Adam(p, lr=lr), task.loss_fn, train, val,
                          schedule=spec.schedule, total_steps=cfg.steps, budget=budget, progress=False)
        except NoViableRateError as exc:
            spent = int(exc.result.steps_spent) if getattr(exc, "result", None) is not None else budget
            return 1e-3, spent, f"every trial diverged ({spent} steps); trained at Adam's 1e-3"
        spent = int(res.steps_spent)
        if spent > budget:
            return float(res.lr), spent, f"search overran its budget: {spent} > {budget} steps"
        return float(res.lr), spent, f"search limited to find_lr(budget={budget}), 10% of {cfg.steps} steps"
    if kind == "torch_lr_finder":
        from torch_lr_finder import LRFinder

        class _LossModule(torch.nn.Module):  # the finder calls criterion(model(inputs), labels)
            def __init__(self):
                super().__init__()
                self.inner = model

            def forward(self, batch):
                return task.loss_fn(self.inner, batch)

        num_iter = min(100, budget)
        if num_iter < 5:
            return 1e-3, 0, (f"no range test fits in {budget} steps (10% of {cfg.steps}); "
                             f"trained at Adam's 1e-3")
        note = "" if num_iter == 100 else (
            f"range test shrunk to {num_iter} iterations to fit 10% of {cfg.steps} steps")
        data = [(b, torch.zeros(1)) for b in task.probe_batches(num_iter, cfg.seed)]
        wrapper = _LossModule()
        opt = torch.optim.Adam(model.parameters(), lr=1e-7)
        finder = LRFinder(wrapper, opt, lambda out, _y: out, device=str(task.device))
        loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            finder.range_test(loader, end_lr=10, num_iter=num_iter)
        lrs, losses = finder.history["lr"], finder.history["loss"]
        finder.reset()
        best = _steepest(lrs, losses, skip_start=max(1, num_iter // 10), skip_end=max(1, num_iter // 20))
        return best, num_iter, note
    raise ValueError(f"unknown selector {kind!r}")


def _steepest(lrs, losses, skip_start: int = 10, skip_end: int = 5) -> float:
    """torch-lr-finder's suggestion: the rate of the most negative loss gradient."""
    lo, hi = skip_start, max(skip_start + 2, len(lrs) - skip_end)
    xs, ys = lrs[lo:hi], losses[lo:hi]
    if len(xs) < 3:
        return float(lrs[len(lrs) // 2])
    grads = [(ys[i + 1] - ys[i - 1]) / 2 for i in range(1, len(ys) - 1)]
    i = min(range(len(grads)), key=lambda j: grads[j] if math.isfinite(grads[j]) else math.inf)
    return float(xs[i + 1])


def schedule_factor(schedule: Optional[str], step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak rate: ``"cosine"`` (warm-up + cosine), ``"linear"`` (warm-up + linear
    decay to zero at ``total``) or ``None`` (1)."""
    if schedule is None:
        return 1.0
    if schedule == "cosine":
        return cosine_factor(step, total, warmup)
    if schedule == "linear":
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine', 'linear' or None")


def warmup_steps(spec, train_steps: int) -> int:
    """Warm-up length of a scheduled method: ``options['warmup']`` of the run (default 5%)."""
    if spec.schedule is None:
        return 0
    return max(1, int(spec.options.get("warmup", 0.05) * train_steps))


class Stepper:
    """One method built on one task and stepped one batch at a time, as the benchmark drives it.

    Shared by :func:`run_one` (a whole run) and :mod:`autostep.bench.overhead` (every method stepped
    in turn in one process), so both time exactly the same work.  ``peak_lr`` is the tuned or
    selected rate (kinds tuned/selector); scheduled methods of other kinds scale the rates they were
    built with.  ``train_steps`` is the schedule's length.
    """

    def __init__(self, task: Task, spec, seed: int, train_steps: int, peak_lr: Optional[float] = None,
                 total_steps: Optional[int] = None):
        self.task, self.spec = task, spec
        model, loss_fn = task.model, task.loss_fn
        self.params = list(model.parameters())
        context = {"total_steps": total_steps or train_steps, "dataset_size": task.dataset_size,
                   "batch_size": task.batch_size, "model": model, "loss_fn": loss_fn}
        if spec.options.get("probe_data"):  # methods that evaluate losses beyond the training batch
            context["probe_data"] = task.probe_batches(int(spec.options["probe_data"]), seed)
        with contextlib.redirect_stdout(io.StringIO()):  # some peers print banners when built
            if spec.kind == "wrapper":
                context.update(probe_data=task.probe_batches(100, seed),
                               autolr_defaults={"total_steps": train_steps})
                opt = spec.build(self.params, context)
            elif spec.kind in ("tuned", "selector"):
                opt = spec.build(self.params, context, lr=peak_lr)
            else:
                opt = spec.build(self.params, context)
        self.opt = opt
        self.inner = getattr(opt, "optimizer", opt)
        self.base_lrs = [g.get("lr") for g in self.inner.param_groups]  # the published SaLSa has none
        self.train_steps = train_steps
        self.warmup = warmup_steps(spec, train_steps)
        if spec.train_eval_modes:
            opt.train()

    def step(self, t: int, batch) -> float:
        """Step ``t`` of the run on ``batch``; returns the batch loss (NaN for a non-finite start)."""
        spec, opt, model, loss_fn = self.spec, self.opt, self.task.model, self.task.loss_fn
        if spec.schedule is not None and None not in self.base_lrs:
            f = schedule_factor(spec.schedule, t, self.train_steps, self.warmup)
            for g, base in zip(self.inner.param_groups, self.base_lrs):
                g["lr"] = base * f
        try:
            if spec.kind == "closure":
                if spec.options.get("closure_style") == "backwards_kwarg":  # the published SaLSa
                    self.inner.zero_grad()

                    def closure(backwards=False):
                        loss = loss_fn(model, batch)
                        if backwards:
                            loss.backward()
                        return loss
                    loss = opt.step(closure)
                else:
                    loss = opt.step(lambda: loss_fn(model, batch))
            else:
                opt.zero_grad()
                loss = loss_fn(model, batch)
                loss.backward()
                if spec.options.get("step_with_loss"):  # MoMo: step(loss=...) after backward
                    opt.step(loss=loss.detach())
                else:
                    opt.step()
            return float(loss.detach())
        except FloatingPointError:  # autostep.NonFiniteLossError: the start loss is already NaN
            return math.nan

    def eval_mode(self) -> None:
        if self.spec.train_eval_modes:
            self.opt.eval()

    def train_mode(self) -> None:
        if self.spec.train_eval_modes:
            self.opt.train()

    def current_lr(self) -> float:
        return _current_lr(self.opt, self.inner)


def _current_lr(opt, inner) -> float:
    """The step size in use: group["lr"] (times Prodigy's ``d``), or the published SaLSa's own."""
    group = inner.param_groups[0]
    lr = group.get("applied_lr", group.get("lr"))  # Autostep's lr is a multiplier
    if lr is None:
        lr = getattr(opt, "step_size", math.nan)
    d = group.get("d")
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        lr = lr * d
    return float(lr)


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
        peak_lr, search_steps, search_note = _select_lr(spec, task, cfg)
    train_steps = max(0, steps - search_steps)
    st = Stepper(task, spec, cfg.seed, train_steps, peak_lr, total_steps=steps)
    opt, inner = st.opt, st.inner

    losses, gaps, diverged_at = [], [], None
    ema, curve_every = None, max(1, train_steps // CURVE_POINTS)
    check_every = max(1, train_steps // CHECKPOINTS)
    curve, l0 = [], None
    for t, batch in enumerate(task.batches(train_steps, cfg.seed)):
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
