"""Adam moments with foreach ops (the inner products and norms are in :mod:`._reductions`)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .._grad_mode import no_grad
from ..distributed import local, locals_

__all__ = ["AdamMoments", "adam_moments", "cpu_scalar", "fusable", "fused_adam_update", "init_adam_state",
           "scalar_dtype", "scalar_or_list"]

#: dtypes torch's fused Adam kernel takes
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused_devices() -> tuple:
    """Device types whose fused Adam kernel is used: CPU (torch 2.4 on) and CUDA, where torch has
    one for every float dtype.  Others that torch lists (mps, xpu, ...) take the foreach path: a
    kernel that failed at run time would leave a reused step half applied."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # pragma: no cover - older torch
        return ()
    if not hasattr(torch, "_fused_adam_"):  # pragma: no cover - older torch
        return ()
    return tuple(d for d in _get_fused_kernels_supported_devices() if d in ("cpu", "cuda"))


def _flat_layout(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its memory span without gaps or overlaps (contiguous in some
    order of its dimensions: row-major, channels_last, a transpose), as the fused kernel, which
    walks parameters, gradients and moments as flat buffers, needs."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same strides over the dimensions longer than 1."""
    return a.shape == b.shape and all(x == y for x, y, n in zip(a.stride(), b.stride(), a.shape) if n != 1)


_FUSED_DEVICES = _fused_devices()


def init_adam_state(st: dict, p: torch.Tensor) -> None:
    """Create Adam's moments (zero) and step count (0) in the per-parameter state ``st``."""
    if "exp_avg" not in st:
        st["step"] = 0
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


#: 0-d tensors of scalars that foreach ops multiply or divide by (see :func:`cpu_scalar`)
_SCALARS: dict = {}
_SCALAR_DTYPES = (torch.float32, torch.float64)


def scalar_dtype(tensors: Sequence[torch.Tensor]):
    """The dtype whose 0-d CPU tensors :func:`cpu_scalar` may pass to foreach ``mul``/``div`` on
    ``tensors`` -- they must all be plain CPU tensors of one dtype, float32 or float64 -- else
    ``None`` (Python scalars are used)."""
    if not tensors:
        return None
    dt = tensors[0].dtype
    if dt not in _SCALAR_DTYPES:
        return None
    for t in tensors:
        if t.dtype != dt or t.device.type != "cpu":
            return None
    return dt


def cpu_scalar(value: float, dtype):
    """``value`` for a foreach ``mul``/``div`` on CPU tensors of ``dtype`` (from
    :func:`scalar_dtype`): a cached 0-d tensor of that dtype, or the float itself when ``dtype`` is
    ``None``.

    Why: on CPU a Python scalar is wrapped into a new tensor for every tensor of the list (about
    2.5 us each), a cached 0-d tensor is not (issue 13: inside a SALSA step on the digits MLP,
    ``_foreach_mul(v, beta2)`` took 30 us with the float, 17 us with the tensor).  For values that
    change every step (bias corrections) a new 0-d tensor costs more than it saves: pass floats.
    For float32 and float64 the products and quotients are bitwise the same
    (``tests/test_perf.py``); the half types round the scalar differently, so they keep floats."""
    if dtype is None:
        return value
    key = (value, dtype)
    t = _SCALARS.get(key)
    if t is None:
        if len(_SCALARS) > 256:  # (constants only are expected; keep the cache small regardless)
            _SCALARS.clear()
        # (on the CPU whatever torch.set_default_device says: the tensors multiplied are CPU ones)
        t = _SCALARS[key] = torch.tensor(value, dtype=dtype, device="cpu")
    return t


def scalar_or_list(values: list):
    """One float when every entry is the same (the faster foreach overload), else the list.

    Both overloads apply the same scalar to each tensor, so the result is bitwise the same."""
    first = values[0] if values else 0.0
    return first if all(v == first for v in values) else values


class AdamMoments:
    """Adam's moments of one segment, updated *provisionally* and committed after the step.

    ``m_k = lerp(m_{k-1}, g, 1 - beta1)``, ``v_k = beta2 v_{k-1} + (1 - beta2) g^2`` are the values
    the step uses, but nothing in ``state`` changes until :meth:`commit`: the denominator is computed
    out of place from ``v_{k-1}`` and ``g``, ``m_k`` (where a search needs it before the commit) is
    built in a scratch buffer.  So a step that fails (non-finite start loss or gradient, exception
    in a trial) leaves the moments as they were, without a copy of them.  :meth:`commit` repeats the
    in-place updates with the same foreach ops, so the committed moments are bitwise the values the
    step used.
    """

    __slots__ = ("state", "params", "grads", "b1", "b2", "eps", "ms", "vs", "steps", "fresh",
                 "bc1", "committed", "m_state", "v_state", "sdt")

    def __init__(self, state, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                 betas: tuple[float, float], eps: float):
        self.state, self.params, self.grads = state, list(params), list(grads)
        self.b1, self.b2 = betas
        self.eps = eps
        self.ms, self.vs, self.steps, self.fresh = [], [], [], []
        for p in self.params:
            st = state.get(p)
            if st and "exp_avg" in st:
                self.ms.append(st["exp_avg"])
                self.vs.append(st["exp_avg_sq"])
                self.steps.append(st["step"] + 1)
                self.fresh.append(False)
            else:  # first step: zero moments that enter the state only at commit()
                self.ms.append(torch.zeros_like(p, memory_format=torch.preserve_format))
                self.vs.append(torch.zeros_like(p, memory_format=torch.preserve_format))
                self.steps.append(1)
                self.fresh.append(True)
        self.bc1 = [1.0 - self.b1 ** k for k in self.steps]
        self.committed = False
        # the tensors kept in ``state`` (DTensors under FSDP2); the math runs on their local shards
        self.m_state, self.v_state = self.ms, self.vs
        self.ms, self.vs, self.grads = locals_(self.ms), locals_(self.vs), locals_(self.grads)
        self.sdt = scalar_dtype(self.vs)  # 0-d tensor scalars for mul/div where bitwise the same

    @no_grad
    def denom(self) -> list:
        """A fresh list ``sqrt(v_k / (1 - beta2^k)) + eps`` (torch.optim.Adam's, bitwise)."""
        if not self.params:
            return []
        if self.committed:  # v_k is in the state already: two passes fewer
            d = torch._foreach_sqrt(self.vs)
        else:
            d = torch._foreach_mul(self.vs, cpu_scalar(self.b2, self.sdt))
            torch._foreach_addcmul_(d, self.grads, self.grads, value=1.0 - self.b2)
            torch._foreach_sqrt_(d)
        # (a float: the bias correction changes every step, and a new 0-d tensor per step costs
        # more inside a step than the float's wrapping saves; only constants are cached tensors)
        torch._foreach_div_(d, scalar_or_list([math.sqrt(1.0 - self.b2 ** k) for k in self.steps]))
        torch._foreach_add_(d, self.eps)
        return list(d)

    @no_grad
    def denom_into(self, i: int, view, out: torch.Tensor) -> None:
        """Tensor ``i`` of :meth:`denom` (the piece ``view`` selects) written into ``out``: the
        same elementwise operations in the same order, so bitwise the same values
        (``memory="lean"``, :mod:`autostep._lean`)."""
        v = view(self.vs[i])
        if self.committed:
            torch.sqrt(v, out=out)
        else:
            g = view(self.grads[i])
            torch.mul(v, self.b2, out=out)
            out.addcmul_(g, g, value=1.0 - self.b2)
            out.sqrt_()
        out.div_(math.sqrt(1.0 - self.b2 ** self.steps[i]))
        out.add_(self.eps)

    @no_grad
    def m_into(self, i: int, view, out: torch.Tensor) -> torch.Tensor:
        """Tensor ``i`` of :meth:`m_new` (the piece ``view`` selects): computed into ``out``, or
        after :meth:`commit` the state's own ``m_k`` (a view of it); returns the tensor."""
        if self.committed:
            return view(self.ms[i])
        return torch.lerp(view(self.ms[i]), view(self.grads[i]), 1.0 - self.b1, out=out)

    @no_grad
    def m_new(self, out: Sequence[torch.Tensor] | None = None) -> list:
        """``m_k`` in ``out`` (a scratch list shaped like the params) or in a fresh list (after
        :meth:`commit`: the state's own ``m_k``)."""
        if self.committed:
            return list(self.ms)
        if out is None:
            return list(torch._foreach_lerp(self.ms, self.grads, 1.0 - self.b1))
        out = list(out)
        torch._foreach_copy_(out, self.ms)
        torch._foreach_lerp_(out, self.grads, 1.0 - self.b1)
        return out

    @no_grad
    def commit(self) -> None:
        """Write ``m_k``, ``v_k`` and the step counts into the state (same ops as provisional).

        Once only: a step that cannot fail any more (the amortised mode's reused steps) commits
        first and computes its directions from the state, saving the provisional passes."""
        if not self.params or self.committed:
            self.committed = True
            return
        self.committed = True
        torch._foreach_lerp_(self.ms, self.grads, 1.0 - self.b1)
        torch._foreach_mul_(self.vs, cpu_scalar(self.b2, self.sdt))
        torch._foreach_addcmul_(self.vs, self.grads, self.grads, value=1.0 - self.b2)
        for p, m, v, k, fresh in zip(self.params, self.m_state, self.v_state, self.steps, self.fresh):
            if fresh:
                self.state[p] = {"step": k, "exp_avg": m, "exp_avg_sq": v}
            else:
                self.state[p]["step"] = k


@no_grad
def adam_moments(state, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                 betas: tuple[float, float], eps: float):
    """Update Adam's moments in ``state`` with ``grads`` and return ``(m, v, denom, bc1)``.

    ``denom = sqrt(v / (1 - beta2^k)) + eps`` is a fresh list (the caller may overwrite it),
    ``bc1[i] = 1 - beta1^k_i``; ``m / (bc1 * denom)`` is exactly torch.optim.Adam's update direction.
    """
    b1, b2 = betas
    ms, vs, bc1, bc2s = [], [], [], []
    for p in params:
        st = state[p]
        init_adam_state(st, p)
        st["step"] += 1
        k = st["step"]
        ms.append(st["exp_avg"])
        vs.append(st["exp_avg_sq"])
        bc1.append(1.0 - b1 ** k)
        bc2s.append(math.sqrt(1.0 - b2 ** k))
    if not params:
        return ms, vs, [], bc1
    ms, vs, grads = locals_(ms), locals_(vs), locals_(grads)  # DTensors: shard by shard
    torch._foreach_lerp_(ms, grads, 1.0 - b1)
    torch._foreach_mul_(vs, b2)
    torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, bc2s)
    torch._foreach_add_(denom, eps)
    return ms, vs, list(denom), bc1


def fusable(state, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> bool:
    """Whether :func:`fused_adam_update` applies: torch has a fused Adam kernel for the device (CPU
    from torch 2.4 on, CUDA), every parameter is dense, of a float dtype it takes, with a gradient
    of the same dtype and device, and the parameter, its gradient and its Adam moments in
    ``state`` (where they exist yet) lie in memory alike, without gaps (the kernel walks them as
    flat buffers: a strided view, or a ``channels_last`` parameter with moments loaded from a
    contiguous checkpoint, would be updated wrongly)."""
    if not _FUSED_DEVICES:
        return False
    for p, g in zip(params, grads):
        lp, lg = local(p), local(g)
        if (lp.device.type not in _FUSED_DEVICES or lp.dtype not in _FUSED_DTYPES or lp.is_sparse
                or lg.is_sparse or lg.dtype != lp.dtype or lg.device != lp.device
                or not _flat_layout(lp) or not _same_layout(lp, lg)):
            return False
        st = state.get(p)
        for key in ("exp_avg", "exp_avg_sq"):
            t = st.get(key) if st else None
            if t is not None and (local(t).dtype != lp.dtype or local(t).device != lp.device
                                  or not _same_layout(lp, local(t))):
                return False
    return True


@no_grad
def fused_adam_update(state, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                      betas: tuple[float, float], eps: float, lr: float) -> None:
    """One Adam update ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)`` of ``params`` with its moment
    updates and step counts, in torch's fused kernel: one pass over parameters, gradients and
    moments.  Only where :func:`fusable` holds (checked for every segment before any is updated).

    For float32 and float64 parameters the moments are bitwise :class:`AdamMoments`' and the
    parameters can differ from the foreach path (``commit`` + ``addcdiv``) in the last bit, as the
    kernel rounds in its own order.  For bfloat16 and float16 the kernel keeps float32 intermediates
    and rounds once where the foreach path rounds after every op: ``v`` and the parameters can
    differ by a few units in the last place of those formats.  Used by the
    amortised mode's reused steps, where no search follows and nothing can fail any more (issue 13:
    a reused step at Adam's cost).
    """
    params, grads = list(params), list(grads)
    if not params:
        return
    b1, b2 = betas
    by_key: dict = {}
    steps: dict = {}
    for p, g in zip(params, locals_(grads)):
        st = state[p]
        init_adam_state(st, p)
        lp = local(p)
        k = st["step"] + 1
        if (lp.device, k) not in steps:
            steps[(lp.device, k)] = torch.full((), float(k), dtype=torch.float32, device=lp.device)
        lists = by_key.setdefault((lp.device, lp.dtype), ([], [], [], [], []))
        for lst, t in zip(lists, (lp, g, local(st["exp_avg"]), local(st["exp_avg_sq"]),
                                   steps[(lp.device, k)])):
            lst.append(t)
    for ps, gs, ms, vs, ks in by_key.values():
        torch._fused_adam_(ps, gs, ms, vs, [], ks, lr=lr, beta1=b1, beta2=b2, weight_decay=0.0,
                           eps=eps, amsgrad=False, maximize=False)
    for p in params:
        state[p]["step"] += 1
