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
