"""The benchmark's protocol (warm-up before timing, search budgets, schedules, fair peers, the
controlled overhead table), its statistics (paired comparison, bootstrap, headline) and its figures."""

import json
import math
import os

import pytest
import torch

from autostep import registry
from autostep.bench import (RunConfig, SUITES, build_problem, harness, overhead, report, run_bench, run_one,
                            runner, stepper)
from autostep.bench.report import BASELINE, GREY, headline, paired_compare, summarize
from autostep.bench.report.stats import bootstrap_median_ratio
from autostep.bench.report.styles import bulk_limits


# ------------------------------------------------------------------------------ timing
def test_each_worker_warms_up_once_per_method_and_problem(monkeypatch):
    """Start-up cost landed on a worker's first run (SLS: 3 ms/step on seeds 0-1, 0.4 on seed 2);
    a discarded warm-up run now absorbs it, once per (problem, method) in a process."""
    calls = []
    real = runner._train

    def spy(task, spec, cfg, warm=False):
        calls.append((cfg.method, cfg.role, warm))
        return real(task, spec, cfg, warm=warm)

    monkeypatch.setattr(runner, "_train", spy)
    monkeypatch.setattr(runner, "_WARMED", set())
    for seed in (0, 1):
        assert run_one(RunConfig("quadratic", "SLS", seed, 30))["status"] == "ok"
    assert run_one(RunConfig("quadratic", "Adam", 0, 30))["status"] == "ok"
    assert calls == [("SLS", "warmup", True), ("SLS", "eval", False), ("SLS", "eval", False),
                     ("Adam", "warmup", True), ("Adam", "eval", False)]
    calls.clear()
    run_one(RunConfig("quadratic", "SLS", 2, 30), warmup=False)
    assert calls == [("SLS", "eval", False)]


def test_warm_up_does_not_change_the_run():
    cfg = RunConfig("digits_mlp", "Adam", 0, 15)
    cold = run_one(cfg, warmup=False)
    warm = run_one(cfg)
    assert cold["train_loss"] == warm["train_loss"] and cold["curve"][-1][1] == warm["curve"][-1][1]


# ------------------------------------------------------------------------------ schedules
def test_linear_decay_schedule_reaches_zero():
    f = stepper.schedule_factor
    assert f("linear", 0, 100, 10) == pytest.approx(0.1)
    assert f("linear", 10, 100, 10) == pytest.approx(1.0)
    assert f("linear", 55, 100, 10) == pytest.approx(0.5)
    assert f("linear", 100, 100, 10) == 0.0
    assert f(None, 3, 100, 10) == 1.0
    assert f("cosine", 55, 100, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        f("step", 0, 10, 1)


def test_scheduled_peer_scales_the_rate_it_was_built_with():
    """Prodigy-cosine keeps lr=1 as the peak of its warm-up + cosine (as its README uses it)."""
    if not registry.get("Prodigy-cosine").is_available():
        pytest.skip(registry.get("Prodigy-cosine").missing_reason())
    task = build_problem("quadratic", 0)
    st = stepper.Stepper(task, registry.get("Prodigy-cosine"), 0, train_steps=100)
    batches = list(task.batches(60, 0))
    lrs = []
    for t, b in enumerate(batches):
        st.step(t, b)
        lrs.append(st.inner.param_groups[0]["lr"])
    assert st.warmup == 5 and lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)
    assert lrs[59] == pytest.approx(stepper.cosine_factor(59, 100, 5))
    assert st.inner.param_groups[0]["safeguard_warmup"] is True


@pytest.mark.parametrize("name", ["Prodigy-cosine", "ScheduleFree-AdamW-AlgoPerf", "MoMo-Adam",
                                  "ProdigyPlusScheduleFree", "Adam-linear-tuned"])
def test_fair_peers_train(name):
    spec = registry.get(name)
    if not spec.is_available():
        pytest.skip(spec.missing_reason())
    res = run_one(RunConfig("digits_mlp", name, 0, 40, lr=1e-2 if spec.kind == "tuned" else None))
    assert res["status"] == "ok", res.get("reason")
    assert math.isfinite(res["train_loss"]) and not res["diverged"]
    first = res["curve"][0][1]
    assert res["curve"][-1][1] < first


def test_an_optimizer_without_lr_in_its_groups_still_runs():
    """The published SaLSa keeps no "lr" in param_groups; the shared Stepper must not require one."""
    spec = registry.get("SaLSa-published")
    if not spec.is_available():
        pytest.skip(spec.missing_reason())
    res = run_one(RunConfig("quadratic", "SaLSa-published", 0, 20))
    assert res["status"] == "ok", res.get("reason")
    assert math.isfinite(res["final_lr"])


def test_schedule_free_algoperf_settings():
    spec = registry.get("ScheduleFree-AdamW-AlgoPerf")
    if not spec.is_available():
        pytest.skip(spec.missing_reason())
    opt = spec.build([torch.nn.Parameter(torch.zeros(3))], {"total_steps": 1000})
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"][1], g["weight_decay"], g["warmup_steps"]) == (2.5e-3, 0.9955, 0.08, 20)


def test_peers_extra_lists_the_fair_peers():
    text = open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")).read()
    for pkg in ("momo-opt", "prodigy-plus-schedule-free", "prodigyopt", "schedulefree"):
        assert f'"{pkg}"' in text


# ------------------------------------------------------------------------------ search budget
def test_selectors_spend_at_most_ten_percent_and_say_so():
    """find_lr+Adam-cosine used 344-420 steps of 200-800-step budgets; now at most 10%."""
    for name in ("find_lr+Adam-cosine", "torch-lr-finder+Adam-cosine"):
        spec = registry.get(name)
        if not spec.is_available():
            continue
        res = run_one(RunConfig("digits_mlp", name, 0, 200))
        assert res["status"] == "ok", res.get("reason")
        assert 0 < res["search_steps"] <= 20
        assert "10% of 200" in res["search_note"]
        assert res["curve"][-1][0] == 199  # the training continues to the budget's end


def test_selector_without_room_for_a_search_trains_at_a_default_and_says_so():
    res = run_one(RunConfig("quadratic", "find_lr+Adam-cosine", 0, 12))
    assert res["status"] == "ok" and res["search_steps"] == 0
    assert "no search fits" in res["search_note"] and res["peak_lr"] == 1e-3


# ------------------------------------------------------------------------------ statistics
def test_paired_compare_verdicts():
    base = {0: 1.0, 1: 2.0, 2: 4.0}
    assert paired_compare({0: 0.5, 1: 1.0, 2: 2.0}, base)["verdict"] == "win"  # always half
    assert paired_compare({0: 2.0, 1: 4.1, 2: 8.0}, base)["verdict"] == "loss"
    c = paired_compare({0: 0.9, 1: 2.3, 2: 3.9}, base)  # within the seeds' noise
    assert c["verdict"] == "tie" and c["lo"] < 1 < c["hi"]
    assert paired_compare({0: 0.5, 1: 1.0, 2: 2.0}, base)["ratio"] == pytest.approx(0.5)
    assert paired_compare({0: 0.5}, base)["verdict"] == "n/a"  # one seed: no noise estimate
    assert paired_compare({0: math.inf, 1: 1.0, 2: 2.0}, base)["verdict"] == "loss"  # a divergence
    assert paired_compare({0: 1.0, 1: 2.0}, {0: math.inf, 1: 2.0})["verdict"] == "win"


def test_bootstrap_interval_contains_the_median_ratio():
    ratio, lo, hi = bootstrap_median_ratio({"a": [math.log(0.8), math.log(0.9), math.log(1.0)],
                                                    "b": [math.log(1.1), math.log(1.2), math.log(1.3)],
                                                    "c": [0.0, 0.0, 0.0]})
    assert lo <= ratio <= hi and ratio == pytest.approx(1.0)
    assert bootstrap_median_ratio({"a": [0.1, 0.2]}) == bootstrap_median_ratio({"a": [0.1, 0.2]})


def _fake_results(methods, losses):
    """results.json shape with final train losses ``losses[method][problem] = [per seed]``."""
    runs = []
    for m in methods:
        for p, vals in losses[m].items():
            for s, v in enumerate(vals):
                runs.append({"status": "ok", "problem": p, "method": m, "seed": s, "train_loss": v,
                             "diverged": False, "test_metric": 1 - v, "mean_log_loss": math.log(v),
                             "curve": [(0, 2.0, 1e-3, 0.0), (9, v, 1e-3, 0.01)], "cpu_per_step": 1e-3,
                             "forwards_per_step": 1.0, "backwards_per_step": 1.0, "state_bytes": 8,
                             "param_bytes": 4, "metric_name": "accuracy", "higher_is_better": True,
                             "steps": 10, "search_steps": 0})
    tuning = [{"status": "ok", "problem": p, "method": BASELINE, "seed": 1000, "lr": 1e-3, "steps": 10,
               "config": {"steps": 10}, "val_loss": 1.0, "diverged": False}
              for p in losses[BASELINE] for _ in range(7)]
    return {"suite": "t", "plan": {p: 10 for p in losses[BASELINE]}, "methods": methods, "seeds": [0, 1, 2],
            "tuning_seed": 1000, "chosen_lr": {}, "notes": [], "wall_s": 1.0, "runs": runs,
            "tuning_runs": tuning, "overhead": None}


def test_headline_recommends_autostep_with_its_standing():
    losses = {BASELINE: {"a": [1.0, 2.0, 4.0], "b": [1.0, 1.0, 1.0]},
              "Autostep": {"a": [1.02, 2.01, 4.1], "b": [1.3, 1.35, 1.32]},
              "Other": {"a": [0.5, 1.0, 2.0], "b": [0.5, 0.5, 0.5]}}
    s = summarize(_fake_results(list(losses), losses))
    text, rec = headline({}, s)
    assert rec == "Autostep" and text.startswith("Use `Autostep`")
    assert "1 tie and 1 loss over 2 problems" in text and "8× (its grid included)" in text
    pm = s["per_method"]["Autostep"]
    assert (pm["wins"], pm["ties"], pm["losses"]) == (0, 1, 1) and pm["compute"] == 1.0
    assert s["per_method"][BASELINE]["compute"] == 8.0
    # without Autostep the best untuned method is named, and the sentence says Autostep is absent
    del losses["Autostep"]
    text, rec = headline({}, summarize(_fake_results(list(losses), losses)))
    assert rec == "Other" and "`Autostep` is not in this run" in text and "2 wins" in text


def test_bulk_limits_clip_a_collapsed_line_and_keep_the_references():
    lines = {f"m{i}": [1e-3, 1e-2] for i in range(5)}
    lines["collapse"] = [1e-8, 1e-2]
    lo, hi, clipped = bulk_limits(lines, log=True)
    assert clipped == ["collapse"] and 1e-4 < lo < 1e-3 and hi >= 1e-2
    lo, hi, clipped = bulk_limits(lines, log=True, always={"collapse"})
    assert clipped == [] and lo <= 1e-8


# ------------------------------------------------------------------------------ overhead table
def test_controlled_overhead_measures_every_method_in_one_process(tmp_path, monkeypatch):
    data = overhead.load_or_measure(str(tmp_path), "quadratic", ["Adam", "SLS", "Adam-cosine-tuned"],
                                    blocks=2, block=3, lrs={"Adam-cosine-tuned": 1e-2})
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["Adam"]["ratio"] == pytest.approx(1.0)
    assert rows["SLS"]["rounds"] == 2 and rows["SLS"]["forwards_per_step"] > 1.0
    assert math.isfinite(rows["Adam-cosine-tuned"]["ratio"])
    # reused on resume
    monkeypatch.setattr(overhead, "measure_overhead", lambda *a, **k: pytest.fail("measured twice"))
    again = overhead.load_or_measure(str(tmp_path), "quadratic", ["Adam", "SLS", "Adam-cosine-tuned"],
                                     blocks=2, block=3, lrs={"Adam-cosine-tuned": 1e-2})
    assert again["rows"] == data["rows"]


def test_overhead_refuses_empty_rounds():
    with pytest.raises(ValueError, match="blocks"):
        overhead.measure_overhead("quadratic", ["Adam"], blocks=0)


# ------------------------------------------------------------------------------ suites
def test_long_suite_and_its_methods():
    assert SUITES["long"] == {"fmnist_mlp": 5000, "fmnist_cnn": 3000, "char_gpt": 2000}
    names = harness.default_methods("long")
    assert {"Adam-cosine-tuned", "Adam-linear-tuned", "Prodigy-cosine", "MoMo-Adam"} <= set(names)
    assert all(m in registry.REGISTRY for m in names)
    assert [m for m in names if m.startswith("Autostep")] == [
        m for m in registry.REGISTRY if m == "Autostep" or m.startswith("Autostep-")]
    assert harness.default_methods("quick") == list(registry.REGISTRY)


# ------------------------------------------------------------------------------ figures
def _distinct_colours_and_outside_legends(fig):
    from matplotlib.colors import to_hex
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    for ax in fig.axes:
        colours = [to_hex(line.get_color()) for line in ax.get_lines()
                   if not line.get_label().startswith("_") and to_hex(line.get_color()) != GREY]
        assert len(colours) == len(set(colours)), (ax.get_title(), colours)
        legend = ax.get_legend()
        if legend is not None:
            lb = legend.get_window_extent(renderer)
            for box in boxes:
                assert not lb.overlaps(box), f"legend over the axes in {ax.get_title()!r}"
    return sum(ax.get_legend() is not None for ax in fig.axes)


@pytest.mark.slow
def test_every_figure_of_the_tiny_suite_is_readable(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    backend = matplotlib.get_backend()
    methods = ["Adam", "SLS", "SALSA", "PAL", "Adam-cosine-tuned", "Adam-linear-tuned", "Prodigy",
               "ScheduleFree-AdamW", "MoMo-Adam"]
    methods = [m for m in methods if registry.get(m).is_available()]
    out = str(tmp_path / "b")
    res = run_bench("tiny", out, methods=methods, seeds=(0, 1), workers=1, progress=False,
                    log=lambda *a: None)
    s = summarize(res)
    _, rec = headline(res, s)
    figs = report.figures(res, s, rec)
    names = [n for n, _, _ in figs]
    assert names == ["curves_quadratic.png", "lr_sensitivity_quadratic.png", "curves_digits_mlp.png",
                     "lr_sensitivity_digits_mlp.png", "performance_profile.png", "overhead.png"]
    for name, fig, caption in figs:
        assert caption and "\n" not in caption
        legends = _distinct_colours_and_outside_legends(fig)
        assert legends >= (0 if name == "overhead.png" else 1), name
    # one style per method in every figure: the recommended and the baseline are the boldest
    styles = report.method_styles(res["methods"], rec)
    assert styles[BASELINE]["lw"] == styles[rec]["lw"] == max(st["lw"] for st in styles.values())
    for name, fig, _ in figs:
        for ax in fig.axes:
            for line in ax.get_lines():
                m = line.get_label()
                if m in styles:
                    from matplotlib.colors import to_hex
                    assert to_hex(line.get_color()) == to_hex(styles[m]["color"]), (name, m)
    text = open(os.path.join(out, "report.md")).read()
    for name, _, caption in figs:
        assert f"![{name}]({name})\n\n*{caption}*" in text
        assert os.path.exists(os.path.join(out, name))
    assert "## Overhead (controlled)" in text and "The figure to quote" in text
    assert "W/T/L vs tuned" in text and text.split("## Summary\n\n")[1].startswith("**")
    assert matplotlib.get_backend() == backend  # the library never switches the backend
    data = json.load(open(os.path.join(out, "results.json")))
    assert data["overhead"]["problem"] == "quadratic"
