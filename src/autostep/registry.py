"""One registry of methods by name: autostep's optimizers and wrappers, torch baselines and peers.

Each :class:`MethodSpec` says how the method is driven (``kind``), whether it needs a closure, how to
build it, and which optional extra it needs.  ``autostep.create(name, params, **overrides)`` builds
an optimizer-kind method; ``autostep.list_methods()`` lists the names.  Adding a method to autostep
and to the benchmark is one entry here.

Kinds
    ``closure``   a ``torch.optim.Optimizer`` whose ``step(closure)`` does its own backward
                  (every autostep line search).
    ``torch``     an ordinary optimizer driven by ``zero_grad(); loss.backward(); step()``
                  (torch baselines and most peers), optionally with a warm-up + cosine or
                  warm-up + linear-decay schedule (``schedule``) that scales the built rates.
    ``wrapper``   built around a torch optimizer with the model, loss and data (AutoLR).
    ``selector``  chooses a learning rate before training, then trains a torch optimizer
                  (``find_lr`` + Adam cosine, torch-lr-finder + Adam); the benchmark counts the
                  selection's training steps in the method's budget.
    ``tuned``     a torch optimizer with a warm-up + decay schedule whose peak rate is tuned on a grid.

A method that spends training steps on its own scale search (rather than the run's steps) exposes
that count as an integer attribute ``search_steps`` on the optimizer; the benchmark adds it to the
row's search and compute.  Options the benchmark runner reads: ``warmup`` (schedule warm-up fraction), ``closure_style``,
``step_with_loss`` (``step(loss=...)`` after ``backward``, as MoMo takes it), ``probe_data``,
``selector``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

__all__ = ["MethodSpec", "REGISTRY", "create", "list_methods", "available", "register_method", "get"]


@dataclass(frozen=True)
class MethodSpec:
    """How to build and drive one method.

    ``build(params, context, **overrides)`` returns the optimizer (kinds closure/torch/tuned) or the
    wrapper (kind wrapper; ``context`` then holds ``model``, ``loss_fn``, ``probe_data``).  ``context``
    always holds ``total_steps``, ``dataset_size`` and ``batch_size`` so methods that need them
    (LABPAL's schedule, AutoLR's explore phase) get them.
    """

    name: str
    kind: str
    build: Callable[..., Any]
    family: str  # "autostep", "baseline" or "peer"
    description: str
    requires: tuple = ()  # importable modules the method needs
    extra: Optional[str] = None  # pip extra that provides them
    schedule: Optional[str] = None  # "cosine" / "linear": warm-up + cosine / linear-to-zero decay,
    #                                 driven by the runner (options["warmup"]: fraction, default 0.05)
    grid: tuple = ()  # peak learning rates to tune on (kind "tuned")
    train_eval_modes: bool = False  # optimizer has .train()/.eval() (Schedule-Free)
    options: dict = field(default_factory=dict)

    @property
    def needs_closure(self) -> bool:
        """``step()`` takes a loss closure: kind ``"closure"`` (for autostep's own methods derived
        from the class attribute ``step_requires_closure``, see :func:`_kind`)."""
        return self.kind == "closure"

    def is_available(self) -> bool:
        for mod in self.requires:
            try:
                importlib.import_module(mod)
            except Exception:
                return False
        return True

    def missing_reason(self) -> Optional[str]:
        for mod in self.requires:
            try:
                importlib.import_module(mod)
            except Exception as exc:
                hint = f" (pip install 'autostep[{self.extra}]')" if self.extra else ""
                return f"{self.name} needs `{mod}`{hint}: {type(exc).__name__}"
        return None


REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add (or replace) a method in the registry."""
    if spec.kind not in ("closure", "torch", "wrapper", "selector", "tuned"):
        raise ValueError(f"unknown kind {spec.kind!r} for {spec.name!r}")
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> MethodSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(REGISTRY)}") from None


def list_methods(family: Optional[str] = None, kind: Optional[str] = None,
                 available_only: bool = False) -> list[str]:
    """Names in the registry, optionally filtered by family, kind, or installed requirements."""
    return [n for n, s in REGISTRY.items()
            if (family is None or s.family == family) and (kind is None or s.kind == kind)
            and (not available_only or s.is_available())]


def available(name: str) -> bool:
    return get(name).is_available()


def create(name: str, params, **overrides):
    """Build the optimizer registered as ``name`` on ``params`` (keyword overrides win).

    Only optimizer kinds (closure, torch, tuned) can be built this way; wrappers and selectors need
    a model, a loss and data (see :mod:`autostep.bench`).
    """
    spec = get(name)
    if spec.kind not in ("closure", "torch", "tuned"):
        raise ValueError(f"{name!r} is a {spec.kind}; build it through the benchmark runner")
    reason = spec.missing_reason()
    if reason:
        raise ImportError(reason)
    context = overrides.pop("context", {})
    return spec.build(params, context, **overrides)


# ---------------------------------------------------------------------------------- entries
def _auto(cls_path: str, **fixed):
    module, cls = cls_path.rsplit(".", 1)

    def build(params, context, **kw):
        c = getattr(importlib.import_module(module), cls)
        return c(params, **{**fixed, **kw})
    return build


def _kind(cls_path: str) -> str:
    """``"closure"`` when the class's ``step()`` needs a loss closure, else ``"torch"`` (one source:
    :func:`autostep._closure.needs_closure`)."""
    from ._closure import needs_closure

    module, cls = cls_path.rsplit(".", 1)
    return "closure" if needs_closure(getattr(importlib.import_module(module), cls)) else "torch"


def _labpal(mode):
    def build(params, context, **kw):
        from .optim.labpal import LABPAL
        args = dict(mode=mode)
        for key in ("total_steps", "dataset_size", "batch_size"):
            if context.get(key):
                args[key] = context[key]
        args.update(kw)
        return LABPAL(params, **args)
    return build


def _torch(cls, **fixed):
    def build(params, context, **kw):
        return cls(params, **{**fixed, **kw})
    return build


def _peer(module, cls, **fixed):
    def build(params, context, **kw):
        return getattr(importlib.import_module(module), cls)(params, **{**fixed, **kw})
    return build


for _name, _path, _fixed, _desc in [
    ("SLS", "autostep.optim.sls.SLS", {}, "Armijo line search along -g (Vaswani et al. 2019)"),
    ("AdamSLS", "autostep.optim.sls.AdamSLS", {}, "Armijo with the Adam direction, searched at beta1=0"),
    ("SALSA", "autostep.optim.salsa.SALSA", {}, "smoothed Armijo (both sides as EMAs)"),
    ("SALSA-amortized", "autostep.optim.salsa.SALSA", {"amortize": 10}, "SALSA reusing a settled step size"),
    ("ALSALS", "autostep.optim.salsa.ALSALS", {}, "momentum-aware Armijo along the Adam direction"),
    ("ALSALS-smooth", "autostep.optim.salsa.ALSALS", {"smooth": 0.9}, "ALSALS with SALSA's smoothing"),
    ("PLASLS", "autostep.optim.layerwise.PLASLS", {}, "per-layer Armijo step sizes"),
    ("PAL", "autostep.optim.pal.PAL", {}, "mini-batch parabolic approximation line search"),
]:
    register_method(MethodSpec(_name, _kind(_path), _auto(_path, **_fixed), "autostep", _desc,
                               requires=(_path.rsplit(".", 1)[0],)))

register_method(MethodSpec("LABPAL-sgd", _kind("autostep.optim.labpal.LABPAL"), _labpal("sgd"),
                           "autostep", "large-batch parabola, learning rate reused by SGD",
                           requires=("autostep.optim.labpal",)))
register_method(MethodSpec("LABPAL-nsgd", _kind("autostep.optim.labpal.LABPAL"), _labpal("nsgd"),
                           "autostep", "large-batch parabola, normalized SGD steps",
                           requires=("autostep.optim.labpal",)))


def _autolr(base):
    def build(params, context, **kw):
        from .autolr import AutoLR
        inner = base(params)
        return AutoLR(inner, context["model"], context["loss_fn"], context["probe_data"],
                      **{**context.get("autolr_defaults", {}), **kw})
    return build


register_method(MethodSpec("AutoLR+SGD", "wrapper",
                           _autolr(lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)), "autostep",
                           "explore/exploit learning rate around momentum SGD",
                           requires=("autostep.autolr",)))
def _autolr_adam(params, context, **kw):
    # the paper's r = 1e-3 makes the epsilon bound absolute, which lets one decision raise an
    # Adam-scale rate 100-fold; AutoLR's docstring recommends r ~ 1e-9 for Adam-like rates
    return _autolr(lambda p: torch.optim.Adam(p, lr=1e-4))(params, context, **{"eps_threshold": 1e-9, **kw})


register_method(MethodSpec("AutoLR+Adam", "wrapper", _autolr_adam,
                           "autostep", "explore/exploit learning rate around Adam",
                           requires=("autostep.autolr",)))
register_method(MethodSpec("find_lr+Adam-cosine", "selector", _torch(torch.optim.Adam), "autostep",
                           "step-sampling LR search, then Adam with warm-up + cosine",
                           schedule="cosine", requires=("autostep.finder",),
                           options={"selector": "find_lr"}))

HALF_DECADES_ADAM = tuple(1e-4 * 10 ** (k / 2) for k in range(7))  # 1e-4 ... 1e-1
HALF_DECADES_SGD = tuple(1e-3 * 10 ** (k / 2) for k in range(7))  # 1e-3 ... 1

register_method(MethodSpec("Adam", "torch", _torch(torch.optim.Adam, lr=1e-3), "baseline",
                           "Adam at 1e-3, constant (one-shot)"))
register_method(MethodSpec("Adam-cosine-tuned", "tuned", _torch(torch.optim.Adam), "baseline",
                           "Adam, warm-up + cosine, peak LR tuned on a 7-point half-decade grid",
                           schedule="cosine", grid=HALF_DECADES_ADAM))
register_method(MethodSpec("Adam-linear-tuned", "tuned", _torch(torch.optim.Adam), "baseline",
                           "Adam, warm-up + linear decay to zero, peak LR tuned on the same 7-point grid",
                           schedule="linear", grid=HALF_DECADES_ADAM))
register_method(MethodSpec("SGDm-cosine-tuned", "tuned", _torch(torch.optim.SGD, momentum=0.9),
                           "baseline", "SGD momentum 0.9, warm-up + cosine, tuned peak LR",
                           schedule="cosine", grid=HALF_DECADES_SGD))

register_method(MethodSpec("Prodigy", "torch", _peer("prodigyopt", "Prodigy", lr=1.0), "peer",
                           "Prodigy (lr=1.0)", requires=("prodigyopt",), extra="peers"))
register_method(MethodSpec("D-Adapt-Adam", "torch", _peer("dadaptation", "DAdaptAdam", lr=1.0), "peer",
                           "D-Adaptation Adam (lr=1.0)", requires=("dadaptation",), extra="peers"))
register_method(MethodSpec("ScheduleFree-AdamW", "torch",
                           _peer("schedulefree", "AdamWScheduleFree", lr=2.5e-3), "peer",
                           "Schedule-Free AdamW at its default lr", requires=("schedulefree",),
                           extra="peers", train_eval_modes=True))
register_method(MethodSpec("DoG", "torch", _peer("dog", "DoG"), "peer", "DoG (distance over gradients)",
                           requires=("dog",), extra="peers"))
register_method(MethodSpec("SaLSa-published", "closure", _peer("salsa.SaLSA", "SaLSA"), "peer",
                           "the published SaLSa optimizer (salsa-optimizer package)",
                           requires=("salsa.SaLSA",), extra="peers",
                           options={"closure_style": "backwards_kwarg"}))
register_method(MethodSpec("torch-lr-finder+Adam-cosine", "selector", _torch(torch.optim.Adam), "peer",
                           "torch-lr-finder range test (steepest slope), then Adam warm-up + cosine",
                           schedule="cosine", requires=("torch_lr_finder",), extra="peers",
                           options={"selector": "torch_lr_finder"}))


# fair peers (issue 9): each as its authors recommend using it
def _warmup_steps(fraction: float, context: dict) -> int:
    """``fraction`` of the run's ``total_steps`` (at least one step)."""
    return max(1, int(fraction * (context.get("total_steps") or 0)))


def _prodigy_cosine(params, context, **kw):
    from prodigyopt import Prodigy
    # the README: lr=1, cosine annealing over the run; with a linear warm-up, safeguard_warmup=True
    return Prodigy(params, **{"lr": 1.0, "safeguard_warmup": True, **kw})


def _sf_algoperf(params, context, **kw):
    from schedulefree import AdamWScheduleFree
    # AlgoPerf self-tuning submission: lr 2.5e-3, beta2 0.9955, weight decay 0.08, 2% warm-up
    args = {"lr": 2.5e-3, "betas": (0.9, 0.9955), "weight_decay": 0.08,
            "warmup_steps": _warmup_steps(0.02, context)}
    return AdamWScheduleFree(params, **{**args, **kw})


register_method(MethodSpec("Prodigy-cosine", "torch", _prodigy_cosine, "peer",
                           "Prodigy (lr=1, safeguard_warmup) with 5% warm-up + cosine, as its README",
                           requires=("prodigyopt",), extra="peers", schedule="cosine"))
register_method(MethodSpec("ScheduleFree-AdamW-AlgoPerf", "torch", _sf_algoperf, "peer",
                           "Schedule-Free AdamW, AlgoPerf self-tuning settings (lr 2.5e-3, beta2 0.9955, "
                           "wd 0.08, 2% warm-up)", requires=("schedulefree",), extra="peers",
                           train_eval_modes=True))
register_method(MethodSpec("MoMo-Adam", "torch", _peer("momo", "MomoAdam"), "peer",
                           "MoMo-Adam (momo-opt, lr=1e-2 as its README, loss lower bound 0)",
                           requires=("momo",), extra="peers", options={"step_with_loss": True}))
register_method(MethodSpec("ProdigyPlusScheduleFree", "torch",
                           _peer("prodigyplus", "ProdigyPlusScheduleFree", lr=1.0), "peer",
                           "prodigy-plus-schedule-free at its defaults (lr=1)",
                           requires=("prodigyplus",), extra="peers", train_eval_modes=True))

# ------------------------------------------------------------------ Autostep designs (issue 9)
def _autostep(**fixed):
    def build(params, context, **kw):
        from .optim.autostep import Autostep
        args = dict(model=context.get("model"), loss_fn=context.get("loss_fn"),
                    probe_data=context.get("probe_data"), total_steps=context.get("total_steps"))
        args.update(fixed)
        args.update(kw)
        return Autostep(params, **args)
    return build


for _name, _fixed, _desc, _sf in [
    ("Autostep-ramp-cos", {"decay": "cosine"}, "ramp to the first 10% probe-loss rise, peak = best rate, cosine to T", False),
    ("Autostep-ramp-sf", {"total_steps": None}, "ramp to the first 10% rise, then Schedule-Free averaging", True),
    ("Autostep-ramp-min", {"rise": 1.0, "peak_fraction": 0.35, "decay": "cosine"},
     "ramp to the probe-loss minimum (stop at 2x or no gain over 4x the rate), peak = 0.35 x its rate", False),
    ("Autostep-ramp-half", {"peak_fraction": 0.5, "decay": "cosine"},
     "ramp to the first 10% rise, peak = half the best rate, cosine to T", False),
]:
    register_method(MethodSpec(_name, "torch", _autostep(**_fixed), "autostep", _desc,
                               requires=("autostep.optim.autostep",), train_eval_modes=_sf,
                               options={"probe_data": 2}))


# the recommended default: the design that won on the standard suite (benchmarks/autostep_designs.md)
register_method(MethodSpec("Autostep", "torch", _autostep(), "autostep",
                           "the recommended default: ramp-found scale, linear decay to zero at T",
                           requires=("autostep.optim.autostep",), options={"probe_data": 2}))
