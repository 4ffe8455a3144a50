"""``count_calls``: patch a function with a wrapper that counts its calls (tests only)."""


def count_calls(monkeypatch, owner, name: str) -> dict:
    """Replace ``owner.name`` (for the test's duration) by a wrapper that calls the original and
    counts; returns the counter dict, whose ``"n"`` is the number of calls so far."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls
