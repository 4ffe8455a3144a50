"""Factories of every optimizer in the conformance table (tests/test_conformance.py).

Each entry: name -> callable(params) building the optimizer at small-problem-friendly settings.
Later optimizers (PAL, LABPAL, ...) add their entries here.
"""

import autostep

CASES = {
    "SLS": lambda params: autostep.SLS(params),
    "AdamSLS": lambda params: autostep.AdamSLS(params),
    "SALSA": lambda params: autostep.SALSA(params),
    "SALSA-sgd": lambda params: autostep.SALSA(params, direction="sgd", lr=1.0, max_lr=10.0),
    "SALSA-amortized": lambda params: autostep.SALSA(params, amortize=5),
    "ALSALS": lambda params: autostep.ALSALS(params),
    "ALSALS-smooth": lambda params: autostep.ALSALS(params, smooth=0.9),
    "PLASLS": lambda params: autostep.PLASLS(params),
}

# Parabolic line searches (issue 3).  Imported from their modules so the table works before the
# names are re-exported from ``autostep``.
from autostep.optim.labpal import LABPAL  # noqa: E402
from autostep.optim.pal import PAL  # noqa: E402

CASES.update({
    "PAL": lambda params: PAL(params),
    "PAL-momentum": lambda params: PAL(params, momentum=0.4),
    # small-problem settings: short approximation phases and reuse periods so that a 15-60 step
    # test crosses several phase boundaries (the defaults are 10 batches and 1000 updates)
    "LABPAL-sgd": lambda params: LABPAL(params, mode="sgd", approx_batches=3, reuse_steps=8),
    "LABPAL-nsgd": lambda params: LABPAL(params, mode="nsgd", approx_batches=3, reuse_steps=8),
    "LABPAL-sgd-schedule-momentum": lambda params: LABPAL(
        params, mode="sgd", approx_batches=3, reuse_steps=6, total_steps=24, momentum=0.5),
    "LABPAL-nsgd-noise": lambda params: LABPAL(
        params, mode="nsgd", approx_batches=3, reuse_steps=6, dataset_size=640, batch_size=1),
    "LABPAL-defaults": lambda params: LABPAL(params),
})

# Every autostep closure optimizer of the registry, at its registry defaults.
from autostep import registry as _registry  # noqa: E402

for _name in _registry.list_methods(family="autostep", kind="closure"):
    CASES[f"registry:{_name}"] = (lambda n: (lambda params: _registry.create(n, params)))(_name)
