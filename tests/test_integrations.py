"""Frameworks and features of the README's "Works with" table (issue 10), each through the runnable
example in examples/ that shows it.  Framework imports are slow: one tiny model per test, a few
steps each; the Lightning and Hugging Face tests are marked slow."""

import importlib.util
import math
import pathlib
import sys
import warnings

import pytest
import torch
from torch import nn

import autostep

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


ARMIJO, PARABOLIC = "SALSA", "PAL"


# ---------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("style", ["loss", "torch"])
@pytest.mark.parametrize("method", [ARMIJO, PARABOLIC, "LABPAL-sgd"])
def test_compiled_model_two_graphs_no_recompiles(method, style):
    from torch._dynamo.testing import CompileCounter
    import torch._dynamo.utils as dyn_utils

    ex = example("compile_amp")
    torch._dynamo.reset()
    dyn_utils.counters.clear()
    cnt = CompileCounter()
    opt, losses = ex.compiled(method, steps=6, style=style, backend=cnt)
    assert cnt.frame_count <= 2  # one graph with grad (first evaluation), one without (trials)
    assert sum(dyn_utils.counters["recompiles"].values()) <= 1 if "recompiles" in dyn_utils.counters else True
    assert all(math.isfinite(v) for v in losses)
    assert opt.steps == 6
    torch._dynamo.reset()


# ---------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("method", [ARMIJO, PARABOLIC])
def test_fp16_grad_scaler_and_bf16(method):
    ex = example("compile_amp")
    opt, scaler, losses, scales = ex.fp16(method, steps=8, growth_interval=3)
    assert opt.skipped_steps == 0 and min(losses[4:]) < losses[0]
    assert scales[-1] > scales[0]  # update() saw the inf checks recorded by the step
    opt, losses = ex.bf16(method, steps=8)
    assert min(losses[4:]) < losses[0]


def test_fp16_inf_gradients_skip_the_step_and_lower_the_scale():
    ex = example("compile_amp")
    model, x, y = ex._problem("cpu")
    opt = autostep.SALSA(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 60)
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        with torch.autocast("cpu", dtype=torch.float16):
            return nn.functional.cross_entropy(model(x[:32]), y[:32])

    opt.step(closure, grad_scaler=scaler)
    scaler.update()
    assert opt.last_step["skipped"] == "non-finite gradient"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.state  # no Adam moment was created from the inf gradient
    assert scaler.get_scale() == 2.0 ** 59


# ---------------------------------------------------------------------- accelerate
def test_accelerate_accumulate_uses_every_micro_batch():
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    ref = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)) for _ in range(2)]
    # the accumulated gradient at the start point: mean of the two micro-batch gradients
    grads = [torch.zeros_like(p) for p in model.parameters()]
    for xb, yb in batches:
        gs = torch.autograd.grad(nn.functional.mse_loss(model(xb), yb), list(model.parameters()))
        grads = [a + b / 2 for a, b in zip(grads, gs)]
    accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
    opt = autostep.SLS(model.parameters(), lr=0.5)
    model_p, aopt = accelerator.prepare(model, opt)
    for xb, yb in batches:
        with accelerator.accumulate(model_p):
            accelerator.backward(nn.functional.mse_loss(model_p(xb), yb))
            aopt.step(lambda: nn.functional.mse_loss(model_p(xb), yb))
            aopt.zero_grad()
    assert opt.steps == 1 and opt.backwards == 0  # the step used accelerate's gradients
    eta = opt.last_step["step_sizes"][0]
    for p, w0, gr in zip(model.parameters(), ref, grads):
        assert torch.allclose(p.detach(), w0 - eta * gr, atol=1e-6)


@pytest.mark.parametrize("method", [ARMIJO, PARABOLIC])
def test_accelerate_example_runs(method):
    ex = example("accelerate_accumulate")
    model, opt, losses = ex.main(method, batches=8)
    assert opt.steps == 4 and all(math.isfinite(v) for v in losses)


# ---------------------------------------------------------------------- Lightning
@pytest.mark.slow
@pytest.mark.parametrize("method", [ARMIJO, PARABOLIC, "LABPAL-sgd"])
def test_lightning_automatic_optimization_with_clipping_and_accumulation(method):
    ex = example("lightning_automatic")
    model, trainer = ex.main(method, max_steps=4, accumulate=2, clip=0.05)
    opt = trainer.optimizers[0]
    opt = getattr(opt, "_optimizer", opt)
    assert opt.steps == 4
    # Lightning's closure: one backward per step, none in trials (LABPAL's measuring calls need
    # no gradient: their backward is skipped too)
    assert opt.backwards == opt.steps if method != "LABPAL-sgd" else 1 <= opt.backwards < opt.steps
    assert opt.forwards > opt.steps
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    if method != "LABPAL-sgd":  # (LABPAL's last call only measured: it used no gradient)
        assert norm <= 0.05 * (1 + 1e-4)  # gradient_clip_val applied to the gradients used
    assert all(math.isfinite(v) for v in model.losses)


# ---------------------------------------------------------------------- Hugging Face Trainer
@pytest.mark.slow
@pytest.mark.parametrize("kind,accumulate", [("bert", 2), ("gpt2", 1)])
def test_hf_trainer_with_default_schedule_and_clipping(kind, accumulate):
    ex = example("hf_trainer")
    trainer, opt = ex.main(kind, ARMIJO, steps=4, accumulate=accumulate)
    assert opt.steps == 4
    assert opt.backwards == 0  # the Trainer's backward: the step used its gradients
    assert math.isfinite(opt.last_step["loss"])
    # the Trainer's linear schedule caps the step size: lr(t) = lr0 * (1 - t/4) after step t
    assert opt.last_step["step_sizes"][0] <= 0.1 * (1 - 3 / 4) + 1e-12


@pytest.mark.slow
def test_hf_trainer_pal():
    ex = example("hf_trainer")
    trainer, opt = ex.main("gpt2", PARABOLIC, steps=3, accumulate=1)
    assert opt.steps == 3 and opt.backwards == 0


# ---------------------------------------------------------------------- Autostep (no closure needed)
def _autostep_for(model, batches, total, **kw):
    return autostep.Autostep(model.parameters(), total_steps=total, model=model,
                             loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
                             probe_data=batches[:2], **kw)


def _regression(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 1))
    w = torch.randn(8, 1, generator=g)
    batches = []
    for _ in range(n):
        x = torch.randn(32, 8, generator=g)
        batches.append((x, x @ w))
    return model, batches


def test_autostep_compiled_model_fp16_scaler_and_clipping():
    from torch._dynamo.testing import CompileCounter

    model, batches = _regression()
    torch._dynamo.reset()
    cnt = CompileCounter()
    cmodel = torch.compile(model, backend=cnt)
    opt = autostep.Autostep(model.parameters(), total_steps=12, model=cmodel,
                            loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
                            probe_data=batches[:2])
    scaler = torch.amp.GradScaler("cpu")
    for t in range(12):
        x, y = batches[t % len(batches)]
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(cmodel(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert cnt.frame_count <= 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    torch._dynamo.reset()


def test_autostep_accelerate_accumulate():
    from accelerate import Accelerator

    model, batches = _regression()
    opt = _autostep_for(model, batches, total=3)
    accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
    model_p, aopt = accelerator.prepare(model, opt)
    for x, y in batches:
        with accelerator.accumulate(model_p):
            accelerator.backward(nn.functional.mse_loss(model_p(x), y))
            aopt.step()
            aopt.zero_grad()
    assert opt.param_groups[0]["applied_lr"] >= 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_autostep_lightning_and_hf_trainer():
    ex = example("lightning_automatic")
    import lightning as L

    torch.manual_seed(0)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return autostep.Autostep(self.parameters(), total_steps=4, probe="closure")

    module = Module()
    loader = torch.utils.data.DataLoader(ex.make_data(), batch_size=32)
    trainer = L.Trainer(max_steps=4, gradient_clip_val=1.0, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, loader)
    assert trainer.global_step == 4

    hf_ex = example("hf_trainer")
    from transformers import Trainer, TrainingArguments
    import tempfile

    torch.manual_seed(0)
    model = hf_ex.tiny_gpt2()
    ds = hf_ex.dataset("gpt2")
    probe = [{k: torch.stack([d[k] for d in ds[:8]]) for k in ds[0]}]
    opt = autostep.Autostep(model.parameters(), total_steps=4, model=model,
                            loss_fn=lambda m, b: m(**b).loss, probe_data=probe)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=4, per_device_train_batch_size=8,
                                 gradient_accumulation_steps=2, report_to=[], save_strategy="no",
                                 logging_strategy="no", use_cpu=True, disable_tqdm=True,
                                 lr_scheduler_type="constant")  # Autostep brings its own decay
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="Autostep: a scheduler")
            Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None)).train()  # no adapter
    assert opt.param_groups[0]["k"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------------- find_lr
@pytest.mark.slow
def test_find_lr_on_a_hf_model_and_a_compiled_model():
    from autostep.finder import search as F

    hf_ex = example("hf_trainer")
    torch.manual_seed(0)
    model = hf_ex.tiny_gpt2()
    ds = hf_ex.dataset("gpt2")
    batches = [{k: torch.stack([d[k] for d in ds[i:i + 8]]) for k in ds[0]} for i in range(0, 32, 8)]
    r = F.find_lr(model, lambda ps, lr: torch.optim.AdamW(ps, lr=lr), lambda m, b: m(**b).loss,
                  batches, batches[:1], steps=3, lr_range=(1e-4, 1e-1), tol=0.5, progress=False)
    assert 1e-4 <= r.lr <= 1e-1

    model, batches = _regression()
    torch._dynamo.reset()
    cmodel = torch.compile(model, backend="eager")
    r = F.find_lr(cmodel, lambda ps, lr: torch.optim.SGD(ps, lr=lr),
                  lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), batches, batches[:1],
                  steps=3, lr_range=(1e-4, 1e-1), tol=0.5, progress=False)
    assert 1e-4 <= r.lr <= 1e-1
    torch._dynamo.reset()
