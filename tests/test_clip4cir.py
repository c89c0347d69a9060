"""CLIP4Cir on a tiny CPU configuration (baselines.md §4.7): the Combiner alone with C = 8, P = 16, H = 32 on random
features, and the method over the tiny open_clip model (C = 64, 32 px), B = 4."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from method_checks import assert_state_round_trip, eval_loss
from torch import nn

from dwc_core.config.experiments import default_config
from dwc_core.errors import ConfigError
from dwc_core.models import BuildContext, build_method
from dwc_core.models.base import CLIP_MEAN, CLIP_STD, Batch, StepContext
from dwc_core.models.clip4cir import CLIP4Cir, Combiner

TEXTS = ["make it red", "add a blue square", "remove the small green circle", "move it to the left"]
B, SIZE, C = 4, 32, 64


def make_model(seed: int = 0, clip: dict | None = None, **over) -> CLIP4Cir:
    opts = default_config(dataset="synthetic", method="clip4cir")["model"]
    opts["clip"].update(arch="tiny", pretrained="none", **(clip or {}))
    opts.update(projection_dim=32, hidden_dim=48)
    opts.update(over)
    torch.manual_seed(seed)
    return build_method(opts, BuildContext(train_texts=TEXTS, num_labels=B, image_size=SIZE))


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ref = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    target = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return Batch(ref=ref, target=target, texts=list(TEXTS), labels=torch.arange(B))


def trainer_cfg(lr: float = 1e-3, **over) -> dict:
    cfg = default_config(dataset="synthetic", method="clip4cir")["trainer"]
    cfg.update({"lr": lr, "weight_decay": 0.0, **over})
    return cfg


def step_ctx(model: CLIP4Cir, lr: float = 1e-3) -> StepContext:
    return StepContext(model.make_optimizers(trainer_cfg(lr)), autocast=contextlib.nullcontext)


# ---------------------------------------------------------------------------------------------- Combiner alone
def test_combiner_output_gate_and_text_first_concat():
    torch.manual_seed(0)
    comb = Combiner(8, 16, 32)
    img, txt = torch.randn(B, 8) * 3, torch.randn(B, 8) * 3
    comb.eval()
    q, lam = comb(img, txt)
    assert q.shape == (B, 8) and lam.shape == (B, 1)
    assert torch.allclose(q.norm(dim=1), torch.ones(B), atol=1e-6)
    assert bool(((lam > 0) & (lam < 1)).all())
    u = comb.projected(img, txt)
    assert torch.equal(u[:, :16], F.relu(comb.text_proj(txt)))  # text first
    assert torch.equal(u[:, 16:], F.relu(comb.image_proj(img)))
    v = comb.output_layer(F.relu(comb.combiner_layer(u)))
    assert torch.allclose(q, F.normalize(v + lam * txt + (1 - lam) * img, dim=1), atol=1e-6)
    # eval deterministic, train stochastic (dropout 0.5)
    assert torch.equal(comb(img, txt)[0], q)
    comb.train()
    assert not torch.allclose(comb(img, txt)[0], comb(img, txt)[0])


def test_combiner_gradients_reach_every_linear_layer():
    torch.manual_seed(0)
    comb = Combiner(8, 16, 32)
    q, _ = comb(torch.randn(B, 8), torch.randn(B, 8))
    F.cross_entropy(100 * q @ F.normalize(torch.randn(B, 8), dim=1).t(), torch.arange(B)).backward()
    linears = [m for m in comb.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6
    for m in linears:
        assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- the method
def test_defaults_image_stats_and_shapes():
    model = make_model(projection_dim=None, hidden_dim=None)
    assert model.image_mean == CLIP_MEAN and model.image_std == CLIP_STD
    assert (
        model.combiner.text_proj.out_features == 4 * C and model.combiner.combiner_layer.out_features == 8 * C
    )
    model.eval()
    batch = make_batch()
    q, g = model.encode_queries(batch.ref, batch.texts), model.encode_gallery(batch.target)
    assert q.shape == (B, C) and g.shape == (B, C)
    assert torch.allclose(q.norm(dim=1), torch.ones(B), atol=1e-5)
    assert torch.allclose(g.norm(dim=1), torch.ones(B), atol=1e-5)


def test_combiner_gets_raw_features_and_loss_is_ce_100_cos(monkeypatch):
    model = make_model()
    model.eval()
    batch = make_batch()
    seen = []
    real = Combiner.forward
    monkeypatch.setattr(Combiner, "forward", lambda self, i, t: seen.append((i, t)) or real(self, i, t))
    with torch.no_grad():
        terms = model.loss_terms(batch.ref, batch.texts, batch.target)
        img = model.clip.encode_image(model.prepare_images(batch.ref))
        txt = model.clip.encode_text(batch.texts)
        i_in, t_in = seen[0]
        assert torch.allclose(i_in, img) and torch.allclose(t_in, txt)
        assert not torch.allclose(i_in.norm(dim=1), torch.ones(B))  # not normalised before the Combiner
        q = real(model.combiner, img, txt)[0]
        tgt = F.normalize(model.clip.encode_image(model.prepare_images(batch.target)), dim=1)
    assert torch.allclose(terms["loss"], F.cross_entropy(100 * q @ tgt.t(), torch.arange(B)), atol=1e-4)


def test_frozen_clip_step_trains_only_the_combiner():
    model = make_model()
    model.train()
    assert not model.clip.training and model.combiner.training
    assert not any(p.requires_grad for p in model.clip.parameters())
    opt = model.make_optimizers(trainer_cfg())["main"]
    assert isinstance(opt, torch.optim.Adam)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.combiner.parameters()
    }
    clip_before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    comb_before = {n: p.detach().clone() for n, p in model.combiner.named_parameters()}
    out = model.train_step(make_batch(), StepContext({"main": opt}, autocast=contextlib.nullcontext))
    assert torch.isfinite(out["loss"])
    for k, v in model.clip.state_dict().items():
        assert torch.equal(v, clip_before[k]), k
    for n, p in model.combiner.named_parameters():
        assert not torch.equal(p, comb_before[n]), n


def test_trainable_clip_stage1_sum():
    model = make_model(clip={"trainable": True, "lr_mult": 0.5}, combiner="sum", optimizer="adamw")
    model.train()
    assert model.combiner is None and not model.clip.training  # CLIP stays in eval mode while fine-tuned
    opt = model.make_optimizers(trainer_cfg(1e-3, weight_decay=0.01))["main"]
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    batch = make_batch()
    model.eval()
    with torch.no_grad():
        img = model.clip.encode_image(model.prepare_images(batch.ref))
        txt = model.clip.encode_text(batch.texts)
        assert torch.allclose(
            model.encode_queries(batch.ref, batch.texts), F.normalize(img + txt, dim=1), atol=1e-5
        )
    model.train()
    before = {n: p.detach().clone() for n, p in model.clip.named_parameters()}
    model.train_step(batch, StepContext({"main": opt}, autocast=contextlib.nullcontext))
    changed = [n for n, p in model.clip.named_parameters() if not torch.equal(p, before[n])]
    assert any("visual" in n for n in changed) and any("transformer" in n for n in changed)


def test_frozen_sum_baseline_is_zero_shot_only():
    model = make_model(combiner="sum")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 0
    assert model.make_optimizers(trainer_cfg(epochs=0)) == {}
    with pytest.raises(ConfigError, match="trainer.epochs: 0"):
        model.make_optimizers(trainer_cfg(epochs=3))


def test_overfits_a_fixed_batch():
    model = make_model(dropout=0.0)  # without dropout noise the 20-step trend is unambiguous
    batch = make_batch()

    before = eval_loss(model, batch)
    ctx = step_ctx(model, lr=3e-3)
    losses = [float(model.train_step(batch, ctx)["loss"]) for _ in range(20)]
    assert losses[-1] < 0.2 * losses[0]
    assert eval_loss(model, batch) < 0.2 * before


def test_state_dict_round_trip_gives_identical_embeddings():
    assert_state_round_trip(make_model, make_batch, step_ctx)
