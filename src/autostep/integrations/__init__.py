"""Entry points for frameworks that cannot hand a closure to ``optimizer.step()``.

* :mod:`autostep.integrations.hf` -- the Hugging Face ``Trainer``: ``hf.attach(trainer)``.

Lightning (automatic optimization) and accelerate need nothing: see the README's "Works with".
"""
