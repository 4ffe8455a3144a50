"""``Autostep``: the recommended default -- Adam's update, a step size found while training, and a
schedule that anneals.

Why this design (the numbers are in ``benchmarks/autostep_designs.md``): a grid-tuned Adam with
warm-up and cosine decay beats every greedy line search, because (1) the greedy per-step rate is
5-50x below the best *peak* rate of a long run (short-horizon bias; the model sharpens to whatever
rate it is trained at, so a line search keeps measuring its own small rate), and (2) the final decay
to zero is what removes the oscillation at the end.  ``Autostep`` therefore estimates only the
*scale*, and takes the *shape* from the run length:

1. **Scale: an edge-of-stability ramp during warm-up.**  The warm-up is a geometric ramp of the rate
   in ordinary training (not a reset-per-trial search), started from a probe-loss line search along
   Adam's first direction.  After every ramp step the loss on a few fixed probe batches is measured
   (one no-grad forward each).  The ramp stops when that loss rises clearly above its best value (the
   rate has crossed the edge of stability), the parameters go back to the best point (one parameter
   copy), and the peak rate is ``peak_fraction`` times the rate that reached the best point.  This is
   the range test of the step-sampling paper run *inside* training, with LABPAL's fixed large probe in
   place of noisy mini-batch losses, so no step of the budget is wasted on resets.
2. **Shape: decay that knows T.**  With ``total_steps`` the rate decays from the peak to zero at T
   (cosine or linear); a probe check every few steps rolls back and halves the peak if the loss ever
   blows up.  Without ``total_steps``, the rate stays at the peak and Schedule-Free iterate averaging
   (Defazio et al. 2024) replaces the decay; call ``opt.eval()`` before evaluating and ``opt.train()``
   after, as with Schedule-Free.

``lr`` is a multiplier on the found rate (1.0 = as found), so ``torch.optim.lr_scheduler`` and the
Hugging Face schedules compose with it: they scale the found rate, they do not replace it.  The rate
applied at the last step is ``param_groups[i]["applied_lr"]``.

References:
    Wu et al. 2018, "Understanding short-horizon bias in stochastic meta-optimization".
    Defazio et al. 2024, "The Road Less Scheduled" (Schedule-Free).
    The step-sampling LR search and LABPAL papers in ``shared/papers``.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Iterable, Optional

import torch

from ..distributed import Reducer
from ._autostep_inputs import check_multipliers, first_rate, grads_finite, probe_loss, run_state, take_batches
from ._autostep_updates import adam_update, init_adam_state, scheduled_rate, sf_swap, sf_update

__all__ = ["Autostep"]


class Autostep(torch.optim.Optimizer):
    """Adam with a step size found during warm-up and a decay to ``total_steps`` -- no tuning.

    Use it in the ordinary loop::

        opt = autostep.Autostep(model.parameters(), total_steps=len(loader) * epochs,
                                model=model, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                                probe_data=val_or_train_batches)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()

    Parameters
    ----------
    params:
        Parameters or parameter groups, as for any torch optimizer.
    lr:
        Multiplier on the found step size (default 1.0).  Schedulers that write ``lr`` scale the
        found rate.
    total_steps:
        Number of ``step()`` calls in the run.  Given: warm-up ramp, then decay to zero at
        ``total_steps`` (``decay=``).  ``None``: Schedule-Free averaging after the ramp (use
        ``opt.eval()``/``opt.train()`` around evaluation).
    model, loss_fn, probe_data:
        Where the probe losses come from: ``loss_fn(model, batch)`` returns a scalar loss; the first
        ``probe_batches`` batches of ``probe_data`` (a list or a DataLoader; held-out or training
        batches) are kept and evaluated under ``no_grad`` with fixed randomness, buffers restored.
        Alternatively pass ``probe="closure"`` and call ``step(closure)`` with a torch-style closure
        (``zero_grad(); loss = ...; loss.backward(); return loss``, as LBFGS and Lightning use): the
        closure's losses are then the signal.
    betas, eps:
        Adam's moment coefficients and denominator term.
    weight_decay:
        Decoupled weight decay (AdamW): ``p *= 1 - applied_lr * weight_decay``.
    decay:
        ``"linear"`` (default: linear decay to zero, which beat cosine in the design table) or
        ``"cosine"``, to zero at ``total_steps``.
    ramp_steps:
        Longest warm-up ramp; default ``max(10, total_steps // 10)`` (``100`` without ``total_steps``).
    peak_fraction:
        Peak rate as a fraction of the rate that reached the best probe loss in the ramp.
    probe_batches:
        Number of fixed probe batches (default 2).
    guard_every:
        Steps between probe checks after the ramp; 0 turns the blow-up guard off.

    Read-outs: ``param_groups[i]["applied_lr"]`` (rate of the last step), ``["peak_lr"]`` (found
    scale, ``nan`` while ramping), ``["phase"]``, ``probe_forwards`` and ``forwards`` (probe plus the user's training forwards).
    """

    def __init__(self, params: Iterable, lr: float = 1.0, *, total_steps: Optional[int] = None,
                 model: Optional[torch.nn.Module] = None, loss_fn: Optional[Callable] = None,
                 probe_data=None, probe: str = "auto", betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decay: str = "linear", ramp_steps: Optional[int] = None,
                 peak_fraction: float = 1.0, ramp_growth: Optional[float] = None,
                 probe_batches: int = 2, guard_every: Optional[int] = None, rise: Optional[float] = None,
                 patience_factor: float = 4.0, ramp_decades: float = 3.5,
                 ramp_start: float = 0.3):
        run = run_state(lr=lr, total_steps=total_steps, probe=probe, betas=betas, eps=eps,
                        weight_decay=weight_decay, decay=decay, ramp_steps=ramp_steps,
                        peak_fraction=peak_fraction, ramp_growth=ramp_growth, guard_every=guard_every,
                        rise=rise, patience_factor=patience_factor, ramp_decades=ramp_decades,
                        ramp_start=ramp_start)
        given = {"model": model is not None, "loss_fn": loss_fn is not None,
                 "probe_data": probe_data is not None}
        if probe == "auto":
            if not all(given.values()):
                missing = [k for k, v in given.items() if not v]
                raise ValueError(
                    "Autostep finds its step size from losses it measures itself: pass "
                    f"model=, loss_fn=(model, batch) -> loss and probe_data= (missing: {', '.join(missing)}),"
                    " or probe='closure' and call opt.step(closure) with a torch-style closure")
            if not callable(loss_fn):
                raise TypeError(f"Autostep: loss_fn must be callable as loss_fn(model, batch); got {loss_fn!r}")
            self._probe = take_batches(probe_data, probe_batches)
        else:
            self._probe = None
        self._model, self._loss_fn = model, loss_fn
        self._ramp_start = ramp_start
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        applied_lr=0.0, peak_lr=math.nan)
        super().__init__(params, defaults)
        # run-level numbers live in param_groups (as Prodigy and Schedule-Free keep them), mirrored in
        # every group so torch's checkpoint helpers keep them
        for g in self.param_groups:
            for key, value in run.items():
                g.setdefault(key, value)
        self._reducer = Reducer()
        self._warned_schedule = False

    # ------------------------------------------------------------------ run-level state helpers
    def _get(self, key):
        return self.param_groups[0][key]

    def _set(self, **kw) -> None:
        for g in self.param_groups:
            g.update(kw)

    @property
    def probe_forwards(self) -> int:
        """No-grad forwards Autostep ran on its probe batches."""
        return int(self._get("forwards"))

    @property
    def forwards(self) -> int:
        """All forwards so far: the user's one per ``step()`` plus :attr:`probe_forwards`."""
        return self.probe_forwards + int(self._get("k")) + self.skipped_steps

    @property
    def backwards(self) -> int:
        """Backward passes: the user's one per ``step()`` (Autostep runs none itself)."""
        return int(self._get("k")) + self.skipped_steps

    @property
    def skipped_steps(self) -> int:
        return int(self._get("skipped"))

    def _params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    # ------------------------------------------------------------------ probe losses
    def _probe_loss(self) -> float:
        """Mean loss over the fixed probe batches (fixed dropout masks, buffers restored), rank-averaged."""
        value = probe_loss(self._model, self._loss_fn, self._probe)
        self._set(forwards=self._get("forwards") + len(self._probe))
        return self._reducer.mean([value])[0] if self._reducer.active else value

    def _signal(self, closure_loss: Optional[float]) -> float:
        """The loss the ramp and the guard watch: probe loss, or an EMA of the closure's losses."""
        if self._probe is not None:
            return self._probe_loss()
        if closure_loss is None:
            raise RuntimeError("Autostep(probe='closure') needs opt.step(closure): the closure's loss is "
                               "the signal that sets the step size")
        last = self._get("last_loss")
        ema = closure_loss if not math.isfinite(last) else 0.8 * last + 0.2 * closure_loss
        return ema if math.isfinite(closure_loss) else closure_loss

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        """One update from the gradients in ``.grad`` (or from ``closure``, torch-style)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        closure_loss = None if loss is None else float(loss.detach())
        params = [p for p in self._params() if p.grad is not None]
        if not params:
            return loss
        if not grads_finite(params, self._reducer):
            # a non-finite gradient (fp16 overflow, a bad batch) skips the step: nothing changes
            self._set(skipped=self._get("skipped") + 1)
            return loss
        check_multipliers(self.param_groups)
        if self._get("total_steps") is not None and not self._warned_schedule:
            if any(g.get("lr_seen", g["lr"]) != g["lr"] for g in self.param_groups):
                self._warned_schedule = True
                warnings.warn("Autostep: a scheduler is changing lr while Autostep decays its found rate to "
                              "total_steps itself; the two multiply. Use a constant schedule (HF: "
                              "lr_scheduler_type='constant'), or total_steps=None to let the scheduler "
                              "shape the run", stacklevel=2)
        if not self.state and all(g["lr"] == 0 for g in self.param_groups):
            # torch.distributed.checkpoint's _init_optim_state: lr 0 on a fresh optimizer creates the
            # state tensors without taking a step
            self._init_state(params)
            return loss
        self._advance(params, closure_loss)
        for g in self.param_groups:  # only a completed step records the multiplier it saw
            g["lr_seen"] = g["lr"]
        return loss

    def _advance(self, params: list, closure_loss: Optional[float]) -> None:
        """The ramp, the guard and the update for one step whose gradients are finite."""
        phase = self._get("phase")
        k = self._get("k")
        if phase == "start":
            rate = self._initial_rate(params, closure_loss)
            self._set(phase="ramp", ramp_lr=rate, best_lr=rate)
            self._snapshot()
        elif phase == "ramp":
            signal = self._signal(closure_loss)
            self._set(last_loss=signal)
            best = self._get("best_loss")
            if math.isfinite(signal) and signal < best:
                self._set(best_loss=signal, best_lr=self._get("ramp_lr"), since_best=0)
                self._snapshot()
            else:
                self._set(since_best=self._get("since_best") + 1)
            diverged = not math.isfinite(signal) or signal > best * (1.0 + self._get("rise"))
            if diverged or self._get("since_best") >= self._get("patience"):
                # past the edge (the loss blew up, or stopped improving over a `patience` span of
                # rates): back to the best point; peak = fraction of the rate that reached it
                self._restore()
                self._end_ramp(self._get("best_lr") * self._get("peak_fraction"), k)
                self._set(k=k + 1, rollbacks=self._get("rollbacks") + 1)
                return  # this gradient was taken at the abandoned point
            rate = self._get("ramp_lr") * self._get("ramp_growth")
            if k + 1 >= self._get("ramp_steps"):  # still improving at the top: keep the rate reached
                self._end_ramp(self._get("ramp_lr"), k + 1)
                rate = scheduled_rate(self.param_groups[0], k)
            else:
                self._set(ramp_lr=rate)
        else:
            guard = self._get("guard_every")
            if guard and (k - self._get("ramp_end")) % guard == 0:
                signal = self._signal(closure_loss)
                last = self._get("best_loss")
                if not math.isfinite(signal) or signal > 2.0 * last:
                    self._restore()
                    self._set(peak_lr=self._get("peak_lr") * 0.5, rollbacks=self._get("rollbacks") + 1,
                              k=k + 1)
                    return
                self._set(best_loss=signal, last_loss=signal)
                self._snapshot()
            rate = scheduled_rate(self.param_groups[0], k)
        if self._get("total_steps") is None and self._get("phase") == "train":
            self._sf_update(rate)
        else:
            self._adam_update(rate)
        self._set(k=k + 1)

    def _end_ramp(self, peak: float, k: int) -> None:
        self._set(phase="train", peak_lr=peak, ramp_end=k)
        if self._get("total_steps") is None:
            self._start_sf()

    def _initial_rate(self, params: list, closure_loss: Optional[float]) -> float:
        """The ramp's first rate: ``ramp_start`` x the best of a probe-loss line search along Adam's
        first direction (:func:`first_rate`).  Closure mode starts at 1e-5."""
        if self._probe is None:
            return 1e-5
        forwards = self._get("forwards")
        try:
            best_rate, base = first_rate(params, self.param_groups[0]["eps"], self._probe_loss)
        except BaseException:  # an interrupted search changes nothing, counters included
            self._set(forwards=forwards)
            raise
        self._set(best_loss=base)
        return best_rate * self._ramp_start

    def _init_state(self, params: list) -> None:
        for p in params:
            init_adam_state(p, self.state[p])
            self.state[p]["snapshot"] = p.detach().clone()

    # ------------------------------------------------------------------ snapshots (one param copy)
    def _snapshot(self) -> None:
        for p in self._params():
            st = self.state[p]
            if "snapshot" in st:
                st["snapshot"].copy_(p)
            else:
                st["snapshot"] = p.detach().clone()

    def _restore(self) -> None:
        for p in self._params():
            st = self.state[p]
            snap = st.get("snapshot")
            if snap is not None:
                p.copy_(snap)
                if "z" in st:  # Schedule-Free: restart the average at the restored point
                    st["z"].copy_(snap)

    # ------------------------------------------------------------------ updates
    def _adam_update(self, rate: float) -> None:
        for g in self.param_groups:
            g["applied_lr"] = rate * g["lr"]
            adam_update(g, self.state, g["applied_lr"])

    def _start_sf(self) -> None:
        for p in self._params():
            st = self.state[p]
            st["z"] = p.detach().clone()
            st.pop("exp_avg", None)
        self._set(sf_weight=0.0)

    def _sf_update(self, rate: float) -> None:
        weight = self._get("sf_weight")
        for g in self.param_groups:
            g["applied_lr"] = rate * g["lr"]
            sf_update(g, self.state, g["applied_lr"], weight)
        self._set(sf_weight=weight + (rate * self.param_groups[0]["lr"]) ** 2)

    @torch.no_grad()
    def eval(self) -> None:
        """Schedule-Free mode: put the averaged point x into the parameters (no-op otherwise)."""
        if self._get("sf_mode") != "eval":
            self._set(sf_mode="eval")
            sf_swap(self._params(), self.state, self.param_groups[0]["betas"][0], to_eval=True)

    @torch.no_grad()
    def train(self) -> None:
        """Back to training mode after :meth:`eval` (no-op otherwise)."""
        if self._get("sf_mode") != "train":
            self._set(sf_mode="train")
            sf_swap(self._params(), self.state, self.param_groups[0]["betas"][0], to_eval=False)
