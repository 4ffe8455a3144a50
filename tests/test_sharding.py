"""Single-process checks of the sharding plumbing (the two-rank runs are in test_fsdp.py)."""

import torch
from torch import nn

import autostep


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))


def _batches(n=6):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 2, (16,), generator=g)) for _ in range(n)]


class _ReplacesGrads(nn.Module):
    """Mimics FSDP1 with use_orig_params=True: every forward puts an equal copy in each ``.grad``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        for p in self.inner.parameters():
            if p.grad is not None:
                p.grad = p.grad.clone()
        return self.inner(x)


def test_grad_fields_replaced_by_equal_copies_are_not_a_backward_in_the_closure():
    plain, wrapped = _model(), _ReplacesGrads(_model())
    opt_a = autostep.SALSA(plain.parameters())
    opt_b = autostep.SALSA(wrapped.parameters())
    for x, y in _batches():
        opt_a.step(lambda: nn.functional.cross_entropy(plain(x), y))
        opt_b.step(lambda: nn.functional.cross_entropy(wrapped(x), y))
        assert opt_b.last_step["backwards"] == 1  # the optimizer's own backward ran
    for p, q in zip(plain.parameters(), wrapped.inner.parameters()):
        assert torch.equal(p, q)


def test_reducer_weights_and_sums_are_identity_without_sharding():
    from autostep.distributed import Reducer

    r = Reducer()
    ps = list(_model().parameters())
    r.observe([], ps)
    assert not r.sharded and r.weights(ps) is None
    assert r.global_sums([1.5, 2.0]) == [1.5, 2.0]
    assert not r.any_nonzero([torch.zeros(3)]) and r.any_nonzero([torch.zeros(3), torch.ones(1)])
