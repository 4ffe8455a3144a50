"""LABPAL's line direction (the :class:`DirectionWindows` part of
:class:`~autostep.optim.labpal.LABPAL`): gradients accumulated over a window of ``k`` calls,
averaged, with momentum; the clipped gradients of one call; the direction's global norm."""

from __future__ import annotations

import math

import torch

from ._reductions import sq_norm_float

__all__ = ["DirectionWindows"]


class DirectionWindows:
    """The per-parameter ``direction`` buffers (reused as accumulation buffers) and their norm."""

    def _members(self) -> list[list]:
        """Per group, the parameters that received a gradient in the current window."""
        w, state = self._ls["window"], self.state
        # state.get: a parameter without a gradient gets no (empty) state entry
        return [[p for p in g["params"] if p in state and state[p].get("win") == w]
                for g in self.param_groups]

    def _accumulate(self, new_window: bool) -> None:
        w = self._ls["window"]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                buf = st.get("direction")
                # new tensors, never in place: a call that raises later restores the old buffers
                if buf is None or new_window or st.get("win") != w:
                    st["direction"] = p.grad.detach().clone()
                else:
                    st["direction"] = torch.add(buf, p.grad)
                st["win"] = w

    def _finish_direction(self, members: list[list], k: int) -> list[list]:
        """Average the window's buffers in place, apply momentum; returns the directions."""
        dirs = []
        for group, ps in zip(self.param_groups, members):
            bufs = [self.state[p]["direction"] for p in ps]
            if k > 1 and bufs:
                bufs = list(torch._foreach_mul(bufs, 1.0 / k))
                for p, b in zip(ps, bufs):
                    self.state[p]["direction"] = b
            beta = group["momentum"]
            if beta > 0 and ps:
                moms = []
                for p, b in zip(ps, bufs):
                    st = self.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = b.clone()
                    else:
                        st["momentum_buffer"] = st["momentum_buffer"].mul(beta).add_(b)
                    moms.append(st["momentum_buffer"])
                dirs.append(moms)
            else:
                dirs.append(bufs)
        return dirs

    def _clip_swap(self):
        """``max_grad_norm``: put clipped copies into ``.grad`` for this call (undone by _unswap)."""
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        clip = self._clip_coef([p.grad for p in ps], ps)
        if clip >= 1.0:
            return None
        orig = [p.grad for p in ps]
        for p, g in zip(ps, torch._foreach_mul(orig, clip)):
            p.grad = g
        return ps, orig

    @staticmethod
    def _unswap(swapped) -> None:
        if swapped is not None:
            for p, g in zip(*swapped):
                p.grad = g

    def _norm(self, members: list[list], dirs: list[list]) -> float:
        """``||d||`` over all groups: local sums weighted for the shards of sharded (FSDP)
        parameters, rank-averaged (the global norm, the same on every rank)."""
        flat_p = [p for ps in members for p in ps]
        # scale-safe (float64 where float32 over- or underflows, issue 11 item 9)
        sq = sq_norm_float([t for d in dirs for t in d], self.reducer.weights(flat_p))
        sq = self.reducer.mean([sq])[0]
        return math.sqrt(sq) if sq >= 0 else math.nan

    def _set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr
