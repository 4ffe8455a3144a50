"""The registry and the benchmark harness: problems, metrics, an end-to-end run, resume."""

import json
import math
import os

import pytest
import torch

import autostep
from autostep import registry
from autostep.bench import PROBLEMS, SUITES, DataMissing, RunConfig, build_problem, run_bench, run_one
from autostep.bench import harness, runner
from autostep.bench.report import SECTIONS, time_to_target
from autostep.bench.runner import mean_log_loss_charged
from autostep.bench.stepper import cosine_factor


# ------------------------------------------------------------------------------ registry
def test_registry_lists_and_creates():
    names = autostep.list_methods()
    for n in ("SLS", "SALSA", "ALSALS", "PLASLS", "AdamSLS", "PAL", "LABPAL-nsgd", "Adam",
              "Adam-cosine-tuned", "AutoLR+SGD", "find_lr+Adam-cosine"):
        assert n in names
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = autostep.create("SALSA", p, c=0.3)
    assert isinstance(opt, autostep.SALSA) and opt.param_groups[0]["c"] == 0.3
    assert isinstance(autostep.create("Adam", p), torch.optim.Adam)
    assert registry.get("SLS").needs_closure and not registry.get("Adam").needs_closure
    assert set(autostep.list_methods(family="peer")) >= {"Prodigy", "ScheduleFree-AdamW"}


def test_registry_errors_are_clear():
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        autostep.create("nope", [])
    with pytest.raises(ValueError, match="wrapper"):
        autostep.create("AutoLR+SGD", [])
    with pytest.raises(ValueError, match="unknown kind"):
        registry.register_method(registry.MethodSpec("x", "weird", None, "autostep", ""))


def test_missing_peer_is_reported_not_raised():
    spec = registry.MethodSpec("ghost", "torch", lambda p, c: None, "peer", "",
                               requires=("no_such_module_xyz",), extra="peers")
    assert not spec.is_available()
    assert "pip install 'autostep[peers]'" in spec.missing_reason()


# ------------------------------------------------------------------------------ metrics
def test_mean_log_loss_with_divergence_charged():
    vals = [math.e ** 2, math.e, 1.0, 5.0]
    assert mean_log_loss_charged(vals, l0=math.e ** 3, diverged_at=None, total=4) == pytest.approx(
        (2 + 1 + 0 + math.log(5.0)) / 4)
    # diverged at step 2: steps 2 and 3 are charged log(l0) = 3
    assert mean_log_loss_charged(vals, l0=math.e ** 3, diverged_at=2, total=4) == pytest.approx((2 + 1 + 3 + 3) / 4)
    # a run that stopped early is charged for its missing steps
    assert mean_log_loss_charged([1.0], l0=math.e, diverged_at=None, total=3) == pytest.approx(2 / 3)


def test_cosine_schedule_and_time_to_target():
    assert cosine_factor(0, 100, 10) == pytest.approx(0.1)
    assert cosine_factor(9, 100, 10) == pytest.approx(1.0)
    assert cosine_factor(10, 100, 10) == pytest.approx(1.0)
    assert cosine_factor(55, 100, 10) == pytest.approx(0.5)
    assert cosine_factor(100, 100, 10) == pytest.approx(0.0)
    curve = [(0, 3.0, 0.1, 0.0), (10, 2.0, 0.1, 0.5), (20, 0.9, 0.1, 1.0), (30, 0.5, 0.1, 1.5)]
    assert time_to_target(curve, 1.0) == (20.0, 1.0)
    assert time_to_target(curve, 0.1) == (math.inf, math.inf)


# ------------------------------------------------------------------------------ problems
GPU_PROBLEMS = set(SUITES["gpu"])


# fmnist_cnn evaluates a CNN on the 60k training images (~3 s): slow; the other Fashion-MNIST
# problems run the same data and evaluation path in the fast run
@pytest.mark.parametrize("name", [pytest.param(p, marks=pytest.mark.slow) if p == "fmnist_cnn" else p
                                  for p in PROBLEMS if p not in GPU_PROBLEMS])
def test_every_problem_builds_and_trains_a_few_steps(name):
    try:
        task = build_problem(name, seed=0)
    except DataMissing as exc:
        pytest.skip(str(exc))
    opt = torch.optim.Adam(task.model.parameters(), lr=1e-3)
    before, _ = task.evaluate("train")
    for batch in task.batches(5, seed=0):
        opt.zero_grad()
        loss = task.loss_fn(task.model, batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        opt.step()
    after, metric = task.evaluate("test")
    assert math.isfinite(before) and math.isfinite(after) and math.isfinite(metric)
    # the seed fixes initialisation and data order
    again = build_problem(name, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 build_problem(name, seed=0).model.state_dict().values()))
    b1 = next(iter(again.batches(1, seed=3)))
    b2 = next(iter(build_problem(name, seed=0).batches(1, seed=3)))
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))


@pytest.mark.parametrize("name", [p for p in PROBLEMS if p not in GPU_PROBLEMS])
def test_building_a_task_leaves_the_global_generator_alone(name):
    """The builders seeded the model by reseeding torch's global generator (the caller's RNG moved)."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    try:
        build_problem(name, seed=0)
    except DataMissing as exc:
        pytest.skip(str(exc))
    assert torch.equal(torch.get_rng_state(), before)


def test_the_command_line_faces_use_the_bench_tasks():
    from autostep.bench.tasks import demo_task

    a, b = demo_task("digits", seed=2), build_problem("digits_mlp", seed=2)
    assert a.name == "digits_mlp" and all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),
                                                                             b.model.state_dict().values()))
    with pytest.raises(ValueError, match="unknown problem 'nope'"):
        demo_task("nope")
    with pytest.raises(ValueError, match="split must be"):
        a.evaluate("validation")
    with pytest.raises(ValueError, match="samples its own batches"):
        next(build_problem("char_gpt", seed=0).batches(1, batch_size=8))
    assert len(a.batch_list(2, seed=0, batch_size=5)[0][0]) == 5


def test_quadratic_suboptimality_is_exact():
    task = build_problem("quadratic", seed=0)
    with torch.no_grad():
        task.model.theta.copy_(task.train[0].mean(0))
    gap, _ = task.evaluate("train")
    assert abs(gap) < 1e-3 * task.optimum


def test_matfac_optimum_is_reached_by_the_best_rank_k_map():
    task = build_problem("matfac_k4", seed=0)
    x, y = task.train
    assert task.optimum > 0
    # the full-rank least-squares fit is better than the rank-4 optimum
    b = torch.linalg.lstsq(x.double(), y.double()).solution
    full = float(((x.double() @ b - y.double()) ** 2).mean())
    assert full <= task.optimum + 1e-9


# ------------------------------------------------------------------------------ runs
def test_run_one_records_the_metrics():
    res = run_one(RunConfig("quadratic", "SLS", 0, 20))
    assert res["status"] == "ok"
    for key in ("train_loss", "test_metric", "mean_log_loss", "cpu_per_step", "forwards_per_step",
                "state_bytes", "curve", "diverged"):
        assert key in res
    assert res["forwards_per_step"] > 1.0 and res["backwards_per_step"] == pytest.approx(1.0)
    assert len(res["curve"]) == 20 and not res["diverged"]


def test_divergence_is_detected_and_charged():
    registry.register_method(registry.MethodSpec(
        "test-SGD-huge", "torch", lambda p, c: torch.optim.SGD(p, lr=10.0), "baseline", "diverges"))
    try:
        res = run_one(RunConfig("quadratic", "test-SGD-huge", 0, 50))
    finally:
        del registry.REGISTRY["test-SGD-huge"]
    assert res["status"] == "ok" and res["diverged"]
    assert math.isnan(res["train_loss"])
    assert res["diverged_at"] < 50


def test_unknown_problem_and_method_are_refused():
    with pytest.raises(ValueError, match="unknown problem"):
        build_problem("nope", 0)
    with pytest.raises(ValueError, match="unknown methods"):
        run_bench("tiny", "/tmp/x", methods=["nope"], progress=False, report=False)
    with pytest.raises(ValueError, match="unknown suite"):
        run_bench("huge", "/tmp/x", progress=False, report=False)


def test_tiny_bench_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "bench")
    kw = dict(methods=["Adam", "SLS", "Adam-cosine-tuned"], seeds=(0,), workers=1, progress=False,
              log=lambda *a: None)
    res = run_bench("tiny", out, **kw)
    report = open(os.path.join(out, "report.md")).read()
    for section in SECTIONS:
        assert section in report
    for p in ("quadratic", "digits_mlp"):
        assert f"### {p}" in report
        assert os.path.exists(os.path.join(out, f"curves_{p}.png"))
        assert os.path.exists(os.path.join(out, f"lr_sensitivity_{p}.png"))
    assert os.path.exists(os.path.join(out, "performance_profile.png"))
    assert os.path.exists(os.path.join(out, "overhead.png"))
    data = json.load(open(os.path.join(out, "results.json")))
    assert len(data["runs"]) == 2 * 3 and len(data["tuning_runs"]) == 2 * 7
    assert all(r["status"] == "ok" for r in data["runs"])
    # resume: nothing is trained again
    monkeypatch.setattr(harness, "run_one", lambda cfg: pytest.fail(f"re-ran {cfg}"))
    capsys.readouterr()
    again = run_bench("tiny", out, **{**kw, "progress": True})
    assert [r["train_loss"] for r in again["runs"]] == [r["train_loss"] for r in res["runs"]]
    err = capsys.readouterr().err  # the shared progress bar: 14 grid runs and 6 runs, all cached
    assert "bench" in err and "/20" in err


def test_interrupted_run_file_is_ignored(tmp_path):
    cfg = RunConfig("quadratic", "Adam", 0, 10)
    path = runner.run_path(str(tmp_path), cfg)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write('{"config": ')  # half-written
    assert runner.load_run(str(tmp_path), cfg) is None


def test_gpu_problems_build_and_the_device_plumbing_runs_on_cpu():
    try:
        task = build_problem("resnet20_fmnist", seed=0, device="cpu")
    except DataMissing as exc:
        pytest.skip(str(exc))
    x, y = next(iter(task.batches(1, seed=0)))
    assert x.shape[1:] == (1, 32, 32)
    loss = task.loss_fn(task.model, (x[:8], y[:8]))
    assert torch.isfinite(loss)
    gpt = build_problem("char_gpt_large", seed=0)
    assert sum(p.numel() for p in gpt.model.parameters()) > 5_000_000
    # Task.to() moves the model and every batch/evaluation: exercised here with the CPU device
    q = build_problem("quadratic", seed=0).to("cpu")
    assert q.model.h.device.type == "cpu" and math.isfinite(q.evaluate("val")[0])


def test_cuda_request_without_a_gpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="cuda"):
        run_bench("tiny", str(tmp_path), methods=["Adam"], device="cuda", progress=False, report=False)
    with pytest.raises(ValueError, match="device must be"):
        run_bench("tiny", str(tmp_path), methods=["Adam"], device="tpu", progress=False, report=False)
