"""TIRG on a tiny CPU configuration (baselines.md §3.7): D = 16, ResNet-18 without weights at 32×32 (layer4 1×1;
the tiny CNN where only speed matters), LSTM 16/16, a 13-word vocabulary, B = 4, both losses."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from method_checks import assert_state_round_trip

from dwc_core.config.experiments import default_config
from dwc_core.models import BuildContext, build_method, losses
from dwc_core.models.base import Batch, StepContext
from dwc_core.models.tirg import TIRG

TEXTS = ["make it red", "add a blue square", "remove the green circle", "move it left"]
B, SIZE, D = 4, 32, 16


def make_model(seed: int = 0, arch: str = "tiny", **over) -> TIRG:
    opts = default_config(dataset="synthetic", method="tirg")["model"]
    opts.update(embed_dim=D, cnn={"arch": arch, "pretrained": "none"}, text={"word_dim": D, "hidden": D})
    opts.update(over)
    torch.manual_seed(seed)
    return build_method(opts, BuildContext(train_texts=TEXTS, num_labels=B, image_size=SIZE))


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ref = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    target = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return Batch(ref=ref, target=target, texts=list(TEXTS), labels=torch.arange(B))


def trainer_cfg(lr: float, **over) -> dict:
    cfg = default_config(dataset="synthetic", method="tirg")["trainer"]
    cfg.update({"lr": lr, "weight_decay": 0.0, **over})
    return cfg


def step_ctx(model: TIRG, lr: float = 1e-3) -> StepContext:
    return StepContext(model.make_optimizers(trainer_cfg(lr)), autocast=contextlib.nullcontext)


def test_shapes_init_and_eval_determinism():
    model = make_model(arch="resnet18")  # layer4 is 1×1 at 32 px; fc 512 → 16
    assert model.img_fc.in_features == 512
    assert model.composer.a.tolist() == [1.0, 10.0, 1.0, 1.0]
    assert model.norm_scale.item() == 4.0
    assert len(model.text.vocab) == 1 + 13  # UNK + the 13 distinct words
    model.eval()
    batch = make_batch()
    q = model.encode_queries(batch.ref, batch.texts)
    g = model.encode_gallery(batch.target)
    assert q.shape == (B, D) and g.shape == (B, D)
    assert torch.allclose(q.norm(dim=1), torch.ones(B), atol=1e-5)
    assert torch.equal(q, model.encode_queries(batch.ref, batch.texts))  # dropout off, BN running stats
    model.train()
    assert not torch.allclose(model.text_features(TEXTS), model.text_features(TEXTS))  # text dropout 0.1 on


def test_composition_formula_and_text_last_valid_step():
    model = make_model()
    model.eval()
    comp = model.composer
    img, txt = torch.randn(B, D), torch.randn(B, D)
    x = torch.cat([img, txt], 1)
    with torch.no_grad():
        expected = torch.sigmoid(comp.gate(x)) * img + 10 * comp.res(x)
        assert torch.allclose(comp(img, txt), expected, atol=1e-5)
        feats = model.text_features(TEXTS)
        for i, text in enumerate(
            TEXTS
        ):  # last valid output of the padded batch == the caption's own last output
            out, _ = model.text([text])
            assert torch.allclose(feats[i], model.txt_fc(out[0, -1]), atol=1e-6)


@pytest.mark.parametrize("loss", ["batch_based_classification", "soft_triplet"])
def test_both_losses_give_gradients_to_s_and_a(loss, monkeypatch):
    model = make_model(loss=loss)
    called = []
    real = getattr(losses, loss)
    monkeypatch.setattr(losses, loss, lambda q, t: called.append(q.norm(dim=1)) or real(q, t))
    opt = model.make_optimizers(trainer_cfg(1e-3))["main"]
    seen = {}

    def capture(name):
        seen["s"] = model.norm_scale.grad.clone()
        seen["a"] = model.composer.a.grad.clone()

    ctx = StepContext({"main": opt}, autocast=contextlib.nullcontext)
    ctx.after_step.append(capture)
    out = model.train_step(make_batch(), ctx)
    assert torch.isfinite(out["loss"]) and len(called) == 1
    assert torch.allclose(called[0], torch.full((B,), 4.0), atol=1e-5)  # s·f̂ with s = 4
    assert seen["s"].abs() > 0
    assert seen["a"][0] != 0 and seen["a"][1] != 0 and seen["a"][2] == 0 and seen["a"][3] == 0


def test_batch_based_classification_is_s_squared_cos():
    model = make_model()
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        q = model.compose(batch.ref, batch.texts)
        t = model.image_features(batch.target)
        cos = F.normalize(q, dim=1) @ F.normalize(t, dim=1).t()
        value = losses.batch_based_classification(4 * F.normalize(q, dim=1), 4 * F.normalize(t, dim=1))
    assert torch.allclose(value, F.cross_entropy(16 * cos, torch.arange(B)), atol=1e-5)


def test_sgd_groups_and_step_changes_parameters():
    model = make_model(optimizer="sgd", backbone_lr_mult=0.1)
    opt = model.make_optimizers(trainer_cfg(1e-2))["main"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(next(model.cnn.parameters()))] == pytest.approx(1e-3)
    assert lrs[id(model.img_fc.weight)] == pytest.approx(1e-2)
    assert len(lrs) == sum(1 for p in model.parameters() if p.requires_grad)  # every parameter once
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train_step(make_batch(), StepContext({"main": opt}, autocast=contextlib.nullcontext))
    for name in ("img_fc.weight", "composer.a", "norm_scale", "text.lstm.weight_hh_l0", "cnn.body.0.weight"):
        assert not torch.equal(dict(model.named_parameters())[name], before[name]), name


def test_overfits_a_fixed_batch():
    model = make_model()
    batch = make_batch()
    ctx = step_ctx(model, lr=1e-3)
    losses_ = [float(model.train_step(batch, ctx)["loss"]) for _ in range(20)]
    assert sum(losses_[-5:]) < 0.5 * sum(losses_[:5])


def test_state_dict_round_trip_gives_identical_embeddings():
    assert_state_round_trip(make_model, make_batch, step_ctx)
