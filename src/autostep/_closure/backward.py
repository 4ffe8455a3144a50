"""Interception of ``torch.autograd.backward``: what a torch-style closure's own ``backward()``
calls did during one evaluation, and skipping them during trials.

``torch.autograd.backward`` is wrapped once per process (:func:`install_backward_wrapper`) with a
pass-through that is only active while :func:`recording` is entered, in the thread that entered it.
"""

from __future__ import annotations

import functools
import threading
from typing import Sequence

import torch

__all__ = ["Recorder", "install_backward_wrapper", "recording"]

_TLS = threading.local()
_ORIG_BACKWARD = None
_INSTALL_LOCK = threading.Lock()


class Recorder:
    """What a closure's own ``backward()`` calls did during one evaluation (thread-local)."""

    def __init__(self, params: Sequence[torch.Tensor], skip: bool) -> None:
        self.params = params
        self.skip = skip
        self.calls = 0
        self.pre: list | None = None  # .grad values just before the closure's first backward
        self.pre_taken = False
        self.diff: list | None = None  # what the closure's backward calls added to .grad

    def backward(self, orig, args, kwargs):
        self.calls += 1
        if self.skip:
            return None
        if not self.pre_taken:
            self.pre_taken = True
            if any(p.grad is not None for p in self.params):
                self.pre = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        out = orig(*args, **kwargs)
        if self.pre is not None:
            self.diff = [
                None if p.grad is None else (p.grad - pr if pr is not None else p.grad.clone())
                for p, pr in zip(self.params, self.pre)
            ]
        return out


def install_backward_wrapper() -> None:
    """Wrap ``torch.autograd.backward`` once: a pass-through unless this thread is recording."""
    global _ORIG_BACKWARD
    with _INSTALL_LOCK:
        if _ORIG_BACKWARD is not None:
            return
        orig = torch.autograd.backward

        @functools.wraps(orig)
        def backward(*args, **kwargs):
            rec = getattr(_TLS, "rec", None)
            if rec is None:
                return orig(*args, **kwargs)
            _TLS.rec = None  # a backward inside a backward hook is the user's business
            try:
                return rec.backward(orig, args, kwargs)
            finally:
                _TLS.rec = rec

        backward.__autostep_wrapped__ = orig  # type: ignore[attr-defined]
        torch.autograd.backward = backward
        _ORIG_BACKWARD = orig


class recording:
    """``with recording(rec):`` routes this thread's ``backward()`` calls to ``rec`` (nested uses
    restore the outer recorder).  A class rather than a generator context manager, which costs a
    few microseconds more per use: it is entered for every closure call of every step (issue 13)."""

    __slots__ = ("rec", "prev")

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.prev = None

    def __enter__(self) -> Recorder:
        self.prev = getattr(_TLS, "rec", None)
        _TLS.rec = self.rec
        return self.rec

    def __exit__(self, *exc) -> bool:
        _TLS.rec = self.prev
        return False
