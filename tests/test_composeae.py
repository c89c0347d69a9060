"""ComposeAE on a tiny CPU configuration (baselines.md §2.7): d_img = 32, frozen tiny-CLIP text (d_t = 64), C = 4,
P = 16 (C·P = 64), B = 4."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from method_checks import assert_state_round_trip, eval_loss

from dwc_core.config.experiments import default_config
from dwc_core.errors import ConfigError
from dwc_core.models import BuildContext, build_method, losses
from dwc_core.models.base import Batch, StepContext
from dwc_core.models.composeae import ComplexProjection, ComposeAE

TEXTS = ["make it red", "add a blue square", "remove the small green circle", "move it to the left"]
B, SIZE, D, DT = 4, 32, 32, 64


def make_model(seed: int = 0, **over) -> ComposeAE:
    opts = default_config(dataset="synthetic", method="composeae")["model"]
    opts.update(embed_dim=D, conv_channels=4, pool_len=16, cnn={"arch": "tiny", "pretrained": "none"})
    opts["text_encoder"] = {"arch": "tiny", "pretrained": "none", "cache": True}
    opts.update(over)
    torch.manual_seed(seed)
    return build_method(opts, BuildContext(train_texts=TEXTS, num_labels=B, image_size=SIZE))


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ref = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    target = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return Batch(ref=ref, target=target, texts=list(TEXTS), labels=torch.arange(B))


def trainer_cfg(lr: float, **over) -> dict:
    cfg = default_config(dataset="synthetic", method="composeae")["trainer"]
    cfg.update(lr=lr, weight_decay=0.0, **over)
    return cfg


def step_ctx(model: ComposeAE, lr: float = 1e-2) -> StepContext:
    return StepContext(model.make_optimizers(trainer_cfg(lr)), autocast=contextlib.nullcontext)


@pytest.fixture(scope="module")
def model() -> ComposeAE:
    return make_model()


def test_shapes(model):
    model.eval()
    batch = make_batch()
    z = model.image_features(batch.ref)
    t = model.text_features(batch.texts)
    assert z.shape == (B, D) and t.shape == (B, DT)
    theta = model.composer(z, t, 1.0)
    assert theta.shape == (B, D)
    assert model.composer.img_decoder(theta).shape == (B, D)
    assert model.composer.txt_decoder(theta).shape == (B, DT)
    q, g = model.encode_queries(batch.ref, batch.texts), model.encode_gallery(batch.target)
    assert q.shape == (B, D) and g.shape == (B, D)
    assert torch.allclose(q.norm(dim=1), torch.ones(B), atol=1e-5)
    assert torch.allclose(q, F.normalize(theta, dim=1), atol=1e-6)


def test_conjugate_negates_only_the_imaginary_half():
    proj = ComplexProjection(D, DT).eval()
    z, t = torch.randn(B, D), torch.randn(B, DT)
    plus, parts_plus = proj(z, t, 1.0)
    minus, parts_minus = proj(z, t, -1.0)
    assert plus.shape == (B, 2 * D) and parts_plus.shape == (B, 5, D)
    assert torch.equal(plus[:, :D], minus[:, :D])
    assert torch.equal(plus[:, D:], -minus[:, D:])
    assert not torch.allclose(plus[:, D:], torch.zeros(B, D))
    assert torch.equal(parts_plus[:, 2], z)  # [φ, δ, z, re, im]
    phi, delta = parts_plus[:, 0], parts_plus[:, 1]
    assert torch.allclose(plus[:, :D], phi * torch.cos(delta)) and torch.allclose(
        plus[:, D:], phi * torch.sin(delta)
    )


def test_fusion_weights_and_independent_projections(model):
    comp = model.composer
    assert comp.a.tolist() == [1.0, 10.0, 1.0, 1.0]
    assert model.norm_scale.item() == 4.0
    assert comp.proj_linear.img[1].weight.data_ptr() != comp.proj_conv.img[1].weight.data_ptr()
    comp.eval()
    z, t = torch.randn(B, D), torch.randn(B, DT)
    with torch.no_grad():
        lin = comp.linear(comp.proj_linear(z, t, 1.0)[0])
        conv = comp.conv(comp.proj_conv(z, t, 1.0)[1])
        assert torch.allclose(comp(z, t, 1.0), 10 * lin + conv, atol=1e-5)
    assert comp.conv.net[0].num_features == 4 * 16  # flatten C·P, independent of d


def test_loss_terms_weights_rotation_path_and_gradients(monkeypatch):
    model = make_model()
    model.eval()  # deterministic: dropout off, BN running stats
    batch = make_batch()
    calls = []
    forward = type(model.composer).forward

    def spy(self, z, t, conjugate=1.0):
        calls.append((z.detach().clone(), conjugate))
        return forward(self, z, t, conjugate)

    monkeypatch.setattr(type(model.composer), "forward", spy)
    terms = model.loss_terms(batch.ref, batch.texts, batch.target)
    assert [c for _, c in calls] == [1.0, -1.0]
    assert all(type(c) is float for _, c in calls)  # a scalar, not a (CUDA) tensor
    with torch.no_grad():
        z_src, z_tgt = model.image_features(batch.ref), model.image_features(batch.target)
    assert torch.allclose(calls[0][0], z_src) and torch.allclose(calls[1][0], z_tgt)
    assert set(terms) == {"loss", "base", "img_rec", "txt_rec", "rot"}
    assert all(torch.isfinite(v) for v in terms.values())
    expected = terms["base"] + 0.1 * terms["img_rec"] + 0.1 * terms["txt_rec"] + 0.01 * terms["rot"]
    assert torch.allclose(terms["loss"], expected)
    # L_base = CE over (s·θ̂)(s·ẑ_tgt)ᵀ = 16·cos at init
    with torch.no_grad():
        theta = forward(model.composer, z_src, model.text_features(batch.texts), 1.0)
        cos = F.normalize(theta, dim=1) @ F.normalize(z_tgt, dim=1).t()
    assert torch.allclose(terms["base"], F.cross_entropy(16 * cos, torch.arange(B)), atol=1e-5)
    model.train()
    terms = model.loss_terms(batch.ref, batch.texts, batch.target)
    terms["loss"].backward()
    assert model.norm_scale.grad is not None and model.norm_scale.grad.abs() > 0
    a_grad = model.composer.a.grad
    assert a_grad[0] != 0 and a_grad[1] != 0 and a_grad[2] == 0 and a_grad[3] == 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name


def test_soft_triplet_variant(monkeypatch):
    model = make_model(loss="soft_triplet")
    seen = []
    real = losses.soft_triplet
    monkeypatch.setattr(losses, "soft_triplet", lambda q, t: seen.append(q.shape) or real(q, t))
    terms = model.loss_terms(*(lambda b: (b.ref, b.texts, b.target))(make_batch()))
    assert len(seen) == 2  # main and rotational-symmetry terms
    assert all(torch.isfinite(v) for v in terms.values())


def test_text_encoder_is_frozen_and_cached():
    model = make_model()
    enc = model.text_encoder
    model.train()
    assert not enc.training and not enc.clip.training
    assert not any(p.requires_grad for p in enc.parameters())
    opt_params = {
        id(p)
        for o in model.make_optimizers(trainer_cfg(1e-2)).values()
        for g in o.param_groups
        for p in g["params"]
    }
    assert not opt_params & {id(p) for p in enc.parameters()}
    first = model.text_features(TEXTS)
    assert set(enc._cache) == set(TEXTS)
    assert not first.requires_grad
    assert torch.equal(model.text_features(TEXTS[::-1]), first.flip(0))
    model.load_state_dict(model.state_dict())
    assert enc._cache == {}
    enc.use_cache = False
    assert torch.allclose(model.text_features(TEXTS), first, atol=1e-6)


def test_optimizer_groups_and_step_changes_only_trainable():
    model = make_model()
    opt = model.make_optimizers(trainer_cfg(1e-2))["main"]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(next(model.cnn.parameters()))] == pytest.approx(1e-3)
    assert lrs[id(model.img_fc.weight)] == pytest.approx(1e-2) and lrs[id(model.composer.a)] == pytest.approx(
        1e-2
    )
    adam = make_model(optimizer="adam").make_optimizers(trainer_cfg(1e-4))["main"]
    assert isinstance(adam, torch.optim.Adam)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model.train_step(make_batch(), StepContext({"main": opt}, autocast=contextlib.nullcontext))
    assert torch.isfinite(out["loss"])
    for n, p in model.named_parameters():
        if p.requires_grad and n in ("img_fc.weight", "composer.a", "norm_scale", "cnn.body.0.weight"):
            assert not torch.equal(p, before[n]), n
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n


def test_overfits_a_fixed_batch():
    model = make_model(optimizer="adam")
    batch = make_batch()

    before = eval_loss(model, batch)
    ctx = step_ctx(model, lr=1e-3)
    losses = [float(model.train_step(batch, ctx)["loss"]) for _ in range(20)]
    assert sum(losses[-5:]) < 0.4 * sum(losses[:5])  # dropout 0.5 makes single steps noisy
    assert eval_loss(model, batch) < 0.5 * before


def test_state_dict_round_trip_gives_identical_embeddings():
    assert_state_round_trip(make_model, make_batch, step_ctx)


def test_bad_text_encoder_names_its_option():
    with pytest.raises(ConfigError, match=r"model\.text_encoder\.arch"):
        make_model(text_encoder={"arch": "no-such-clip", "pretrained": "none", "cache": True})
