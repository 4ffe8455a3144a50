"""AutoLR inside the tools people train with: the Hugging Face Trainer and accelerate.

Both take AutoLR as a stock ``torch.optim.Optimizer``; the Trainer's default schedule (a linear
``LambdaLR``) and accelerate's prepared scheduler multiply AutoLR's rate instead of overriding it.
Tiny models built from config, CPU only.
"""

import pytest
import torch

from autostep import AutoLR
from autostep.bench.tasks import digits_mlp


def _tiny_gpt2_rows(n=64):
    rows = []
    for i in range(n):
        ids = (torch.arange(12) * (i % 5 + 1)) % 32
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


@pytest.mark.slow   # importing transformers alone takes several seconds
def test_hf_trainer_runs_autolr_with_its_default_linear_schedule(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    rows = _tiny_gpt2_rows()
    probe = [{k: torch.stack([r[k] for r in rows[i:i + 8]]) for k in ("input_ids", "labels")}
             for i in range(0, 32, 8)]
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = AutoLR(inner, model, lambda m, b: m(**b).loss, probe, recompute_every=5, superbatch=2,
                 explore_steps=15, eps_threshold=1e-6)
    seen = []
    inner.register_step_pre_hook(lambda o, args, kw: seen.append(o.param_groups[0]["lr"]))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=24, per_device_train_batch_size=8, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=100, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows,
                                   optimizers=(opt, None))
    out = trainer.train()
    assert opt.steps == 24 and opt.recomputes == 2
    assert opt.lr > 1e-3   # the explore phase raised the rate
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)
    # the linear decay multiplies AutoLR's rate: the last real update runs at lr * (1 / 24)
    real = [v for v in seen if v != 1.0]   # (the probes' unit-rate steps left out)
    assert len(real) == 24 and real[-1] == pytest.approx(opt.lr / 24, rel=1e-9)
    assert out.training_loss < 3.3


def test_accelerate_prepare_accumulate_and_scheduler():
    accelerate = pytest.importorskip("accelerate")
    torch.manual_seed(0)
    p = digits_mlp(0, hidden=(16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*p.train), batch_size=64,
                                         shuffle=True)
    opt = AutoLR(torch.optim.SGD(p.model.parameters(), lr=0.05, momentum=0.9), p.model,
                 p.loss_fn, p.batch_list(10, seed=7), recompute_every=5, superbatch=2,
                 explore_steps=20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / 40)
    acc = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, aopt, aloader, asched = acc.prepare(p.model, opt, loader, sched)
    assert aopt.optimizer is opt   # accelerate wraps AutoLR like any optimizer
    first = last = None
    micro = 0
    for _ in range(4):
        for b in aloader:
            with acc.accumulate(model):
                loss = p.loss_fn(model, b)
                acc.backward(loss)
                aopt.step()
                asched.step()
                aopt.zero_grad()
            micro += 1
            first = loss.item() if first is None else first
            last = loss.item()
    assert micro == 80 and opt.steps == 40   # one AutoLR step per two micro-batches
    assert opt.recomputes >= 3 and opt.lr > 0.05 and last < 0.5 * first
    assert set(aopt.state_dict()) == {"state", "param_groups"}


@pytest.mark.slow   # importing lightning takes several seconds
def test_lightning_automatic_optimization_with_clipping_accumulation_and_scheduler():
    L = pytest.importorskip("lightning")
    torch.manual_seed(0)
    p = digits_mlp(0, hidden=(16,))
    made = {}

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = p.model

        def training_step(self, batch, i):
            return p.loss_fn(self.net, batch)

        def configure_optimizers(self):
            opt = AutoLR(torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9), self.net,
                         p.loss_fn, p.batch_list(10, seed=7), recompute_every=5, superbatch=2,
                         explore_steps=20)
            made["opt"] = opt
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / 80)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*p.train), batch_size=64,
                                         shuffle=True)
    before = p.evaluate("train").loss
    trainer = L.Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, accumulate_grad_batches=2)
    trainer.fit(Module(), loader)
    opt = made["opt"]
    assert opt.steps == 40 and opt.recomputes >= 3 and opt.lr > 0.05
    assert p.evaluate("train").loss < 0.5 * before
