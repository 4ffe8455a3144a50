"""The optimizer table: every autostep line-search optimizer with its constructor inputs, its error
inputs and its capabilities, in the style of torch's ``OptimizerInfo``
(``torch/testing/_internal/common_optimizers.py``).

One :class:`OptimizerInfo` per class, in ``INFOS``.  Each holds

* ``inputs``: the constructor calls the tests run (an :class:`OptimizerInput` each: keyword
  arguments, a short description that names the test case, and the test families that use it);
* ``error_inputs``: constructor calls that must raise (an :class:`ErrorInput` each: the keyword
  arguments, the exception type and a fragment of its message);
* capability flags (``needs_closure``, ``supports_weight_decay``, ``has_amortize``,
  ``is_per_layer``, ``supports_sharding``, ...), checked against the constructor by
  ``test_conformance.py::test_flags_match_the_optimizer``; tests select cases by them.

The test families (``OptimizerInput.suites``):

``CONFORMANCE``  runs of 15-60 steps: tests/test_conformance.py, test_checkpoint.py, test_closure.py.
``FAULTS``       runs of 3-10 steps with injected faults: tests/test_faults.py.  LABPAL's inputs for
                 it use short phases (2 measuring calls, 3 updates) so that a few steps cross
                 several phase boundaries.

``CASES`` maps each case name (``"<class>"`` or ``"<class>-<desc>"``) to a :class:`Case`; calling
a case with parameters builds the optimizer.  ``names(suite)`` lists a family's cases.  No two
inputs build the same optimizer (``test_conformance.py::test_no_two_cases_build_the_same_optimizer``),
and every autostep closure method of the registry is the input that names it in ``registry``
(``test_registry_methods_are_table_inputs``), so the registry's builds are covered without
running the table twice.

Adding an optimizer: one ``OptimizerInfo`` entry below (its inputs, its error inputs, its flags).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import autostep

CONFORMANCE = "conformance"
FAULTS = "faults"
BOTH = frozenset({CONFORMANCE, FAULTS})


@dataclass(frozen=True)
class OptimizerInput:
    """One constructor call: ``cls(params, **kwargs)``."""

    desc: str  # "" for the class at its defaults; else the case name's suffix
    kwargs: dict = field(default_factory=dict)
    suites: frozenset = BOTH  # the test families that run it (CONFORMANCE, FAULTS)
    registry: Optional[str] = None  # the registry method that builds exactly this optimizer


@dataclass(frozen=True)
class ErrorInput:
    """A constructor call that must raise ``error`` with ``match`` (a regex) in its message."""

    kwargs: dict
    error: type = ValueError
    match: str = ""

    @property
    def id(self) -> str:
        return ",".join(f"{k}={v!r}" for k, v in self.kwargs.items())


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer class: what to build, what must be refused, and what it supports."""

    cls: type
    inputs: tuple
    error_inputs: tuple
    needs_closure: bool = True  # step() without a closure raises ClosureError
    supports_weight_decay: bool = True  # decoupled ``weight_decay`` and ``max_grad_norm``
    has_amortize: bool = False  # ``amortize=k`` reuses a settled step size (SALSA family)
    is_per_layer: bool = False  # one step size per layer (``layer_lrs`` in the group)
    is_armijo: bool = False  # backtracking Armijo search (``c``, ``max_trials``, ``step_size``)
    first_call_updates: bool = True  # False: LABPAL's first calls measure the loss, no update
    supports_sharding: bool = True  # FSDP/DTensor parameters (two-rank tests in test_fsdp.py)

    @property
    def name(self) -> str:
        return self.cls.__name__


@dataclass(frozen=True)
class Case:
    """One (optimizer, input) pair of the table; ``case(params)`` builds the optimizer."""

    info: OptimizerInfo
    input: OptimizerInput

    @property
    def name(self) -> str:
        return self.info.name + (f"-{self.input.desc}" if self.input.desc else "")

    def __call__(self, params, **overrides):
        return self.info.cls(params, **{**self.input.kwargs, **overrides})


# ---------------------------------------------------------------------------------- error inputs
def _lr_errors(bound: str) -> tuple:
    """The ``lr`` checks every optimizer makes (``bound``: "> 0", or ">= 0" where lr is a read-out)."""
    return (
        ErrorInput({"lr": -1.0}, ValueError, f"lr must be {bound}"),
        ErrorInput({"lr": math.nan}, ValueError, "lr must be finite"),
        ErrorInput({"lr": "0.1"}, ValueError, "lr must be a number"),
    )


ARMIJO_ERRORS = _lr_errors("> 0") + (
    ErrorInput({"c": 1.5}, ValueError, r"c must be in \(0, 1\)"),
    ErrorInput({"c": 0.0}, ValueError, r"c must be in \(0, 1\)"),
    ErrorInput({"max_trials": 0}, ValueError, "max_trials must be an integer >= 1"),
    ErrorInput({"backtrack": 1.0}, ValueError, r"backtrack must be in \(0, 1\)"),
    ErrorInput({"lr": 20.0, "max_lr": 10.0}, ValueError, "must not exceed max_lr"),
    ErrorInput({"reset": "never"}, ValueError, "reset must be one of"),
)
ADAM_ERRORS = (
    ErrorInput({"betas": (1.0, 0.999)}, ValueError, r"betas\[0\] must be in \[0, 1\)"),
    ErrorInput({"eps": 0.0}, ValueError, "eps must be > 0"),
    ErrorInput({"memory": "small"}, ValueError, r"memory must be one of \('fast', 'lean'\), got 'small'"),
)
SMOOTHED_ERRORS = (
    ErrorInput({"smooth": 1.0}, ValueError, r"smooth must be in \[0, 1\)"),
    ErrorInput({"amortize": -1}, ValueError, "amortize must be an integer >= 0"),
)
OPTION_ERRORS = (  # decoupled weight decay and clipping (every optimizer here)
    ErrorInput({"weight_decay": -1.0}, ValueError, "weight_decay must be >= 0"),
    ErrorInput({"max_grad_norm": 0.0}, ValueError, "max_grad_norm must be > 0"),
)

# ---------------------------------------------------------------------------------------- table
INFOS = (
    OptimizerInfo(
        autostep.SLS,
        inputs=(OptimizerInput("", registry="SLS"),),
        error_inputs=ARMIJO_ERRORS + OPTION_ERRORS,
        is_armijo=True,
    ),
    OptimizerInfo(
        autostep.AdamSLS,
        inputs=(
            OptimizerInput("", registry="AdamSLS"),
            # memory="lean" (the denominator rebuilt at each use), one input per class
            OptimizerInput("lean", {"memory": "lean"}),
        ),
        error_inputs=ARMIJO_ERRORS + ADAM_ERRORS + OPTION_ERRORS,
        is_armijo=True,
    ),
    OptimizerInfo(
        autostep.SALSA,
        inputs=(
            OptimizerInput("", registry="SALSA"),
            OptimizerInput("sgd", {"direction": "sgd", "lr": 1.0, "max_lr": 10.0}),
            OptimizerInput("amortized", {"amortize": 5}),
            OptimizerInput("amortized-lean", {"amortize": 5, "memory": "lean"}),
            OptimizerInput("amortized-10", {"amortize": 10}, suites=frozenset({CONFORMANCE}),
                           registry="SALSA-amortized"),
        ),
        error_inputs=ARMIJO_ERRORS + ADAM_ERRORS + SMOOTHED_ERRORS + OPTION_ERRORS + (
            ErrorInput({"direction": "lion"}, ValueError, "direction must be one of"),
        ),
        is_armijo=True, has_amortize=True,
    ),
    OptimizerInfo(
        autostep.ALSALS,
        inputs=(
            OptimizerInput("", registry="ALSALS"),
            OptimizerInput("smooth", {"smooth": 0.9}, registry="ALSALS-smooth"),
            OptimizerInput("smooth-lean", {"smooth": 0.9, "memory": "lean"}),
        ),
        error_inputs=ARMIJO_ERRORS + ADAM_ERRORS + SMOOTHED_ERRORS + OPTION_ERRORS,
        is_armijo=True, has_amortize=True,
    ),
    OptimizerInfo(
        autostep.PLASLS,
        inputs=(
            OptimizerInput("", registry="PLASLS"),
            OptimizerInput("lean", {"memory": "lean"}),
        ),
        error_inputs=ARMIJO_ERRORS + ADAM_ERRORS + OPTION_ERRORS,
        is_armijo=True, is_per_layer=True,
    ),
    OptimizerInfo(
        autostep.PAL,
        inputs=(
            OptimizerInput("", registry="PAL"),
            OptimizerInput("momentum", {"momentum": 0.4}),
        ),
        error_inputs=_lr_errors(">= 0") + OPTION_ERRORS + (
            ErrorInput({"measuring_step": 0.0}, ValueError, "measuring_step must be > 0"),
            ErrorInput({"max_step": -1.0}, ValueError, "max_step must be > 0"),
            ErrorInput({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
        ),
    ),
    OptimizerInfo(
        autostep.LABPAL,
        inputs=(
            # CONFORMANCE: short approximation phases and reuse periods, so that a 15-60 step
            # test crosses several phase boundaries (the defaults are 10 batches, 1000 updates)
            OptimizerInput("sgd", {"mode": "sgd", "approx_batches": 3, "reuse_steps": 8},
                           suites=frozenset({CONFORMANCE})),
            OptimizerInput("nsgd", {"mode": "nsgd", "approx_batches": 3, "reuse_steps": 8},
                           suites=frozenset({CONFORMANCE})),
            OptimizerInput("sgd-schedule-momentum",
                           {"mode": "sgd", "approx_batches": 3, "reuse_steps": 6, "total_steps": 24,
                            "momentum": 0.5}, suites=frozenset({CONFORMANCE})),
            OptimizerInput("nsgd-noise", {"mode": "nsgd", "approx_batches": 3, "reuse_steps": 6,
                                          "dataset_size": 640, "batch_size": 1},
                           suites=frozenset({CONFORMANCE})),
            OptimizerInput("defaults", {}, suites=frozenset({CONFORMANCE}), registry="LABPAL-sgd"),
            OptimizerInput("nsgd-defaults", {"mode": "nsgd"}, suites=frozenset({CONFORMANCE}),
                           registry="LABPAL-nsgd"),
            # FAULTS: 2 measuring calls, 3 updates: a 3-7 step fault test crosses both phases
            OptimizerInput("sgd-short", {"mode": "sgd", "approx_batches": 2, "reuse_steps": 3},
                           suites=frozenset({FAULTS})),
            OptimizerInput("nsgd-momentum", {"mode": "nsgd", "approx_batches": 2, "reuse_steps": 3,
                                             "momentum": 0.5}, suites=frozenset({FAULTS})),
            # plain NSGD: the update's norm is read with the start loss (and is the finiteness hint)
            OptimizerInput("nsgd-short", {"mode": "nsgd", "approx_batches": 2, "reuse_steps": 3},
                           suites=frozenset({FAULTS})),
            OptimizerInput("k2", {"mode": "sgd", "approx_batches": 2, "reuse_steps": 3,
                                  "noise_factor": 2.0}, suites=frozenset({FAULTS})),
        ),
        error_inputs=_lr_errors(">= 0") + OPTION_ERRORS + (
            ErrorInput({"mode": "adam"}, ValueError, "mode must be one of"),
            ErrorInput({"approx_batches": 0}, ValueError, "approx_batches must be an integer >= 1"),
            ErrorInput({"reuse_steps": 0}, ValueError, "reuse_steps must be an integer >= 1"),
            ErrorInput({"measuring_step": 0.0}, ValueError, "measuring_step must be > 0"),
            ErrorInput({"total_steps": 0}, ValueError, "total_steps must be an integer >= 1"),
            ErrorInput({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
            ErrorInput({"noise_factor": 2.0, "dataset_size": 640, "batch_size": 1}, ValueError,
                       "either noise_factor or dataset_size and batch_size"),
            ErrorInput({"dataset_size": 640}, ValueError, "must be given together"),
        ),
        first_call_updates=False,
    ),
)

CASES: dict[str, Case] = {}
for _info in INFOS:
    for _input in _info.inputs:
        _case = Case(_info, _input)
        assert _case.name not in CASES, f"two inputs named {_case.name!r}"
        CASES[_case.name] = _case


def names(suite: str, **flags) -> list[str]:
    """The sorted case names of ``suite`` whose info has every flag in ``flags`` set as given."""
    return sorted(n for n, c in CASES.items() if suite in c.input.suites
                  and all(getattr(c.info, k) == v for k, v in flags.items()))


def info(name: str) -> OptimizerInfo:
    """The :class:`OptimizerInfo` of the class named ``name`` (e.g. ``"SALSA"``)."""
    for i in INFOS:
        if i.name == name:
            return i
    raise KeyError(name)


def without_keys(obj, keys):
    """``obj`` with every dict entry named in ``keys`` removed, at any depth: a state dict of one of
    the table's optimizers compared with another while leaving out counters that may differ."""
    if isinstance(obj, dict):
        return {k: without_keys(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, (list, tuple)):
        return type(obj)(without_keys(v, keys) for v in obj)
    return obj
