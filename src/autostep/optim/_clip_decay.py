"""The options every autostep line search takes (the :class:`ClipAndDecay` part of
:class:`~autostep.optim._optimizer.AutostepOptimizer`): ``max_grad_norm`` (the clipping
coefficient of the global gradient norm, on the host or left on the device) and decoupled
``weight_decay``, and their checks."""

from __future__ import annotations

import warnings

import torch

from .. import _validate as V
from .._stack import outside_level
from .._grad_mode import no_grad
from ._reductions import sq_norm_float, sq_norms

__all__ = ["ClipAndDecay"]


def _coef_from_sq(sq: torch.Tensor, mx: float) -> torch.Tensor:
    """``mx / (||g|| + 1e-6)`` if ``||g|| > mx`` (finite), else 1, from ``sq = ||g||^2`` (0-d
    float64), in torch ops on the tensor's device: the host path (:meth:`_clip_coef`) and the
    device path (:meth:`_clip_coef_device`) share it, so they agree bitwise.  (torch's float64
    ``sqrt`` can differ from ``math.sqrt`` in the last bit; before issue 13 the host path used
    ``math.sqrt``, so clipped runs may differ from then by rounding.)"""
    norm = sq.sqrt()
    # a true division (``mx / tensor`` would multiply by the reciprocal: one rounding more)
    return torch.where(torch.isfinite(norm) & (norm > mx),
                       torch.div(torch.full_like(norm, mx), norm + 1e-6), torch.ones_like(norm))


class ClipAndDecay:
    """``weight_decay`` (per group) and ``max_grad_norm`` (one value for all groups)."""

    def _validate_standard(self, group: dict) -> None:
        """``weight_decay`` (per group) and ``max_grad_norm`` (one value for all groups)."""
        group.setdefault("weight_decay", 0.0)
        group.setdefault("max_grad_norm", None)
        V.nonnegative("weight_decay", group["weight_decay"])
        if group["max_grad_norm"] is not None:
            V.positive("max_grad_norm", group["max_grad_norm"])
        first = self.param_groups[0]
        if group is not first and group["max_grad_norm"] != first.get("max_grad_norm"):
            raise ValueError(
                "max_grad_norm must be the same in every param group (the norm is taken over all "
                f"parameters, as torch.nn.utils.clip_grad_norm_ does); got "
                f"{first.get('max_grad_norm')!r} and {group['max_grad_norm']!r}"
            )

    def _clip_coef(self, grads: list, params: list | None = None) -> float:
        """``max_grad_norm / ||g||`` when the total gradient norm exceeds ``max_grad_norm``, else 1.

        The norm is taken over every gradient of the step (all groups), as
        ``torch.nn.utils.clip_grad_norm_`` does; a non-finite norm is left to the step's own checks.
        """
        mx = self.param_groups[0].get("max_grad_norm")
        if mx is None or not grads:
            return 1.0
        # summed over the shards of sharded (FSDP) parameters, ``params`` being the grads' owners
        weights = self.reducer.weights(params) if params is not None else None
        sq = self.reducer.global_sums([sq_norm_float(grads, weights)])[0]
        return float(_coef_from_sq(torch.tensor(sq, dtype=torch.float64), mx))

    def _clip_coef_device(self, grads: list, params: list | None = None):
        """:meth:`_clip_coef` left on the device: ``None`` without ``max_grad_norm``, else
        ``(coef, sq)``, two 0-d float64 tensors: the coefficient (1 when the norm is within
        ``max_grad_norm`` or not finite) and the squared norm it was computed from.

        The same float64 arithmetic as :meth:`_clip_coef` (float32 norms summed in float64,
        ``sqrt``, ``max_grad_norm / (norm + 1e-6)``), so the coefficient is bitwise the same,
        without a host read.  Only where :meth:`_clip_coef` recomputes the norm in float64 (``sq``
        of 0 or inf: float32 squares under- or overflowed) can they differ; the caller reads
        ``sq`` with its other scalars and then asks :meth:`_clip_coef` (rare; one more read).
        Sharded parameters need their rank sums first: there the coefficient comes from
        :meth:`_clip_coef`."""
        mx = self.param_groups[0].get("max_grad_norm")
        if mx is None or not grads:
            return None
        if self.reducer.sharded and self.reducer.active:
            c = self._clip_coef(grads, params)
            one = torch.tensor(c, dtype=torch.float64, device=grads[0].device)
            return one, torch.ones((), dtype=torch.float64, device=grads[0].device)
        weights = self.reducer.weights(params) if params is not None else None
        sq = sq_norms(grads, weights)
        return _coef_from_sq(sq, mx), sq

    def _warn_decay(self, lr: float, wd: float) -> None:
        """Once per optimizer: the decay factor ``1 - lr * weight_decay`` is <= 0, so this step
        zeroes or flips the weights.  The step sizes are the optimizer's own, so the user cannot
        foresee it: with the searches along the raw gradient (SLS, PAL, LABPAL, ``direction="sgd"``)
        they are SGD-scale (1-1000 near a minimum, where ``||g||`` is small), and AdamW's usual
        ``weight_decay`` of 0.01-0.1 gets there within a few dozen steps."""
        if self.__dict__.get("_decay_warned"):
            return
        self.__dict__["_decay_warned"] = True
        warnings.warn(
            f"{type(self).__name__}.step: decoupled weight decay took lr * weight_decay = "
            f"{lr * wd:.3g} times the weights off them (lr = {lr:.3g}, the step size this step "
            f"took, weight_decay = {wd:g}): it zeroes or flips them, and training will not "
            "recover. Use weight_decay below 1 / lr; where the step multiplies the raw gradient "
            "(SLS, PAL, LABPAL, direction='sgd') lr is SGD-scale and grows as the gradient "
            "shrinks, so take SGD-scale values (1e-4 to 5e-4), not AdamW's 0.01-0.1. "
            "(Warned once per optimizer.)",
            RuntimeWarning, stacklevel=outside_level())

    @no_grad
    def _decay(self, params_per_seg: list, w0s: list | None = None) -> None:
        """Decoupled weight decay, as AdamW: ``w <- w - lr * weight_decay * w0`` per segment.

        ``params_per_seg``: ``(params, weight_decay, lr)`` per segment (group or layer).

        ``w0s`` are the start points (the step has already been applied); without them the
        parameters are at the start point and are scaled by ``1 - lr * weight_decay``.
        """
        for ps, wd, lr in params_per_seg:  # (warned before any segment changes: a warning
            if wd and ps and lr and lr * wd >= 1.0:  # turned into an error must change nothing)
                self._warn_decay(lr, wd)
                break
        for j, (ps, wd, lr) in enumerate(params_per_seg):
            if not wd or not ps or not lr:
                continue
            if w0s is None:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            else:
                torch._foreach_add_(ps, w0s[j], alpha=-lr * wd)
