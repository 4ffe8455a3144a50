"""Autostep under DDP: every rank takes the same ramp decisions from rank-averaged probe losses."""

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import autostep
from test_distributed import data, make_model  # the same model and data as the other DDP tests
import two_ranks

pytestmark = pytest.mark.slow  # two processes

STEPS = 40


def loss_fn(model, b):
    return nn.functional.cross_entropy(model(b[0]), b[1])


def run(model_call, params, shard=None):
    x, y = data()
    probe = (x[:64], y[:64])
    if shard is not None:  # each rank probes its own half: only the rank average is common
        r, world = shard
        n = 64 // world
        probe = (probe[0][r * n:(r + 1) * n], probe[1][r * n:(r + 1) * n])
    opt = autostep.Autostep(params, total_steps=STEPS, model=model_call, loss_fn=loss_fn, probe_data=[probe])
    for k in range(STEPS):
        g = torch.Generator().manual_seed(1000 + k)
        idx = torch.randperm(len(x), generator=g)[:32]
        xb, yb = x[idx], y[idx]
        if shard is not None:
            r, world = shard
            n = 32 // world
            xb, yb = xb[r * n:(r + 1) * n], yb[r * n:(r + 1) * n]
        opt.zero_grad()
        loss_fn(model_call, (xb, yb)).backward()
        opt.step()
    return opt


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = make_model()
        opt = run(DDP(model), model.parameters(), shard=(rank, world))
        g = opt.param_groups[0]
        torch.save({"params": [p.detach().clone() for p in model.parameters()],
                    "peak": g["peak_lr"], "ramp_end": g["ramp_end"], "forwards": opt.forwards},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return two_ranks.run(_worker, tmp_path_factory.mktemp("ddp_autostep"))


def test_ranks_take_identical_decisions(ranks):
    a, b = ranks
    assert a["peak"] == b["peak"] and a["ramp_end"] == b["ramp_end"] and a["forwards"] == b["forwards"]
    for p, q in zip(a["params"], b["params"]):
        assert torch.equal(p, q)


def test_two_ranks_match_one_process(ranks):
    model = make_model()
    opt = run(model, model.parameters())
    g = opt.param_groups[0]
    assert ranks[0]["ramp_end"] == g["ramp_end"]
    assert ranks[0]["peak"] == pytest.approx(g["peak_lr"], rel=1e-6)
    for p, q in zip(ranks[0]["params"], model.parameters()):
        assert torch.allclose(p, q.detach(), atol=1e-5, rtol=1e-5)
