"""DWC on tiny CPU configurations: tiny ViT CLIP (random weights) + tiny CNN, E = 32, batch 4 at 32 px."""

from __future__ import annotations

import contextlib
import copy
import time

import pytest
import torch
from method_checks import assert_same_embeddings

from dwc_core.config.experiments import default_config
from dwc_core.errors import ConfigError
from dwc_core.models import BuildContext, build_method, losses
from dwc_core.models.base import CLIP_MEAN, CLIP_STD, Batch, StepContext
from dwc_core.models.blocks import GeM, Inception1d, Inception2d
from dwc_core.models.dwc import DWC

TEXTS = ["make it red", "is blue and longer", "add stripes", "remove the collar please"]
B, SIZE, E = 4, 32, 32


def options(**over) -> dict:
    opts = default_config(dataset="synthetic", method="dwc")["model"]
    opts.update(embed_dim=E)
    opts["clip"].update(arch="tiny", pretrained="none")
    opts["cnn"].update(arch="tiny", pretrained="none")
    opts["text"]["word_dim"] = 16
    for key, value in over.items():
        if isinstance(value, dict):
            opts[key].update(value)
        else:
            opts[key] = value
    return opts


def make_model(seed: int = 0, **over) -> DWC:
    torch.manual_seed(seed)
    ctx = BuildContext(train_texts=TEXTS, num_labels=B, image_size=SIZE)
    return build_method(options(**over), ctx)


COLOURS = torch.tensor(
    [
        [230, 20, 20],
        [20, 230, 20],
        [20, 20, 230],
        [230, 230, 20],
        [20, 230, 230],
        [230, 20, 230],
        [128, 128, 128],
    ],
    dtype=torch.uint8,
)


def images(idx: list[int]) -> torch.Tensor:
    """Distinct images (solid colour + a black stripe at a per-row place): random CLIP weights still tell them apart."""
    x = COLOURS[idx].view(-1, 3, 1, 1).expand(-1, 3, SIZE, SIZE).clone()
    for i in range(len(idx)):
        x[i, :, :, i * 8 : i * 8 + 4] = 0
    return x


def make_batch() -> Batch:
    return Batch(
        ref=images([0, 1, 2, 3]), target=images([4, 5, 6, 3]), texts=list(TEXTS), labels=torch.arange(B)
    )


def step_ctx(model: DWC, lr: float = 1e-3) -> StepContext:
    trainer = default_config(dataset="synthetic", method="dwc")["trainer"]
    trainer.update(lr=lr, weight_decay=0.0)
    return StepContext(model.make_optimizers(trainer), autocast=contextlib.nullcontext)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())}


def eval_ssg(model: DWC, batch: Batch) -> list[float]:
    """Deterministic (eval-mode) SSG per stream, on the embeddings the evaluator uses."""
    model.eval()
    with torch.no_grad():
        q, t = model.encode_queries(batch.ref, batch.texts), model.encode_gallery(batch.target)
    model.train()
    return [
        losses.ssg_contrastive(q[:, i : i + E], t[:, i : i + E], batch.labels).item()
        for i in range(0, q.size(1), E)
    ]


# ------------------------------------------------------------------------------------------------------ blocks
def test_inception_widths_and_gem():
    x = torch.randn(2, 24, 5, 5)
    block = Inception2d(24, 64)
    assert block(x).shape == (2, 64, 5, 5)
    widths = [
        branch[-1].num_features for branch in (block.branch0, block.branch1, block.branch2, block.branch3)
    ]
    assert widths == [24, 16, 16, 8]  # 3C/8, C/4, C/4, C/8
    assert all(m.bias is None for m in block.modules() if isinstance(m, torch.nn.Conv2d))
    assert Inception1d(16, 32)(torch.randn(2, 16, 7)).shape == (2, 32, 7)
    with pytest.raises(ConfigError, match="multiple of 8"):
        Inception2d(8, 12)
    gem = GeM()
    assert float(gem.p.detach()) == 3.0 and gem.p.requires_grad
    v = torch.tensor([[[1.0, 2.0, -5.0]]])  # negatives clamp to eps
    expected = ((1.0 + 8.0 + 1e-18) / 3) ** (1 / 3)
    assert gem(v).item() == pytest.approx(expected, rel=1e-5)
    assert gem(v, mask=torch.tensor([[1, 1, 0]])).item() == pytest.approx((9.0 / 2) ** (1 / 3), rel=1e-5)


def test_masked_inception1d_equals_the_unpadded_sequence():
    torch.manual_seed(0)
    block = Inception1d(8, 16).eval()
    short = torch.randn(1, 8, 3)
    padded = torch.cat([short, torch.randn(1, 8, 2)], dim=2)  # junk in the padded positions
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0, 0.0]]])
    with torch.no_grad():
        assert torch.allclose(block(padded, mask)[..., :3], block(short), atol=1e-6)


# -------------------------------------------------------------------------------------------------- structure
def test_registered_with_clip_normalisation_and_frozen_clip():
    model = make_model()
    assert isinstance(model, DWC) and model.name == "dwc"
    assert model.image_mean == CLIP_MEAN and model.image_std == CLIP_STD
    assert model.cnn_stream.text.lstm.hidden_size == E
    assert model.cnn_stream.text.embedding.embedding_dim == 16
    assert model.cnn_stream.img_fc.in_features == model.cnn_stream.backbone.out_channels == 256
    assert model.cnn_stream.img_mask.out_channels == 256  # mask multiplies the raw backbone map
    assert all(not p.requires_grad for p in model.clip.parameters())
    model.train()
    assert not model.clip.training and model.cnn_stream.training and model.clip_stream.training
    assert not any(k.startswith("clip.") for k in model.state_dict())
    opt_params = {
        id(p) for o in step_ctx(model).optimizers.values() for g in o.param_groups for p in g["params"]
    }
    assert not opt_params & {id(p) for p in model.clip.parameters()}
    assert set(step_ctx(model).optimizers) == {"clip", "cnn"}


def test_output_shapes_and_scores():
    model = make_model().eval()
    batch = make_batch()
    with torch.no_grad():
        q = model.encode_queries(batch.ref, batch.texts)
        g = model.encode_gallery(batch.target)
    assert q.shape == (B, 2 * E) and g.shape == (B, 2 * E)
    for x in (q, g):  # each stream's half is unit-norm: dot product = cos_CLIP + cos_CNN
        assert torch.allclose(x[:, :E].norm(dim=1), torch.ones(B), atol=1e-5)
        assert torch.allclose(x[:, E:].norm(dim=1), torch.ones(B), atol=1e-5)
    for streams in ("clip", "cnn"):
        single = make_model(streams=streams).eval()
        with torch.no_grad():
            assert single.encode_queries(batch.ref, batch.texts).shape == (B, E)
            assert single.encode_gallery(batch.target).shape == (B, E)


def test_embed_dim_must_be_a_multiple_of_8():
    with pytest.raises(ConfigError, match="multiple of 8"):
        make_model(embed_dim=12)


# --------------------------------------------------------------------------------------------------- training
def test_one_step_updates_both_streams_but_not_clip():
    model = make_model()
    clip_before = snapshot(model.clip)
    streams_before = {"clip_stream": snapshot(model.clip_stream), "cnn_stream": snapshot(model.cnn_stream)}
    terms = model.train_step(make_batch(), step_ctx(model))
    assert set(terms) == {"loss", "clip/ssg", "clip/kl", "clip/loss", "cnn/ssg", "cnn/kl", "cnn/loss"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["loss"].item() == pytest.approx(
        terms["clip/loss"].item() + terms["cnn/loss"].item(), rel=1e-6
    )
    assert not changed(clip_before, model.clip)
    assert model.clip.model.visual.conv1.weight.grad is None
    for name, before in streams_before.items():
        moved = changed(before, getattr(model, name))
        assert moved, name
    assert {"img_fc.0.weight", "img_gate.3.weight", "combiner.mlp.0.weight"} <= changed(
        streams_before["clip_stream"], model.clip_stream
    )
    assert {
        "backbone.body.0.weight",
        "text.lstm.weight_hh_l0",
        "img_mask.branch0.0.weight",
        "gem_text.p",
    } <= changed(streams_before["cnn_stream"], model.cnn_stream)


def test_alternating_schedule_and_teachers():
    """CLIP step first (CNN teacher), then CNN step whose CLIP teacher already has the updated weights; teachers
    run in train mode on the reference image (teacher_targets: reference)."""
    model = make_model()
    batch = make_batch()
    ctx = step_ctx(model)
    order, seen = [], []
    ctx.after_step.append(order.append)
    head = model.clip_stream.img_fc[0].weight
    initial = head.detach().clone()

    def clip_hook(module, args):
        seen.append(("clip_stream", torch.is_grad_enabled(), module.training, torch.equal(head, initial)))

    def cnn_embed_hook(module, args):
        seen.append(("cnn_target", torch.is_grad_enabled(), module.training, args[0].mean().item()))

    model.clip_stream.register_forward_pre_hook(clip_hook)
    orig = model.cnn_stream.embed_image

    def spy(images):
        cnn_embed_hook(model.cnn_stream, (images,))
        return orig(images)

    model.cnn_stream.embed_image = spy
    model.train_step(batch, ctx)
    assert order == ["clip", "cnn"]
    ref_mean = model.prepare_images(batch.ref).mean().item()
    tgt_mean = model.prepare_images(batch.target).mean().item()
    # CLIP step: the CNN teacher (no grad, train mode) embeds the reference; then the CLIP stream with grad
    assert seen[0][:3] == ("cnn_target", False, True) and seen[0][3] == pytest.approx(ref_mean)
    assert seen[1] == ("clip_stream", True, True, True)
    # CNN step: the CLIP teacher has the updated weights (no grad, train mode); the CNN target is the real target
    assert seen[2] == ("clip_stream", False, True, False)
    assert seen[3][:3] == ("cnn_target", True, True) and seen[3][3] == pytest.approx(tgt_mean)
    assert len(seen) == 4

    model = make_model(teacher_targets="target")
    seen.clear()
    orig = model.cnn_stream.embed_image
    model.cnn_stream.embed_image = spy
    model.train_step(batch, step_ctx(model))
    assert seen[0][3] == pytest.approx(tgt_mean) and seen[0][1] is False


def test_loss_decreases_when_overfitting_a_fixed_batch():
    model = make_model()
    batch = make_batch()
    ctx = step_ctx(model, lr=1e-3)
    start = eval_ssg(model, batch)
    t0 = time.time()
    for _ in range(20):
        model.train_step(batch, ctx)
    end = eval_ssg(model, batch)
    print(f"eval SSG per stream (clip, cnn): {start} -> {end} in {time.time() - t0:.1f}s")
    assert end[0] < 0.85 * start[0] and end[1] < 0.85 * start[1]


def test_state_dict_round_trip_gives_identical_embeddings(tmp_path):
    # the frozen CLIP is not in the checkpoint: both models load it from the same weights file
    clip_file = tmp_path / "clip.pt"
    torch.save(make_model(seed=5).clip.model.state_dict(), clip_file)
    model = make_model(seed=0, clip={"pretrained": str(clip_file)})
    model.train_step(make_batch(), step_ctx(model))  # move away from the init (BN stats, GeM p, ...)
    path = tmp_path / "dwc.pt"
    torch.save(model.state_dict(), path)
    fresh = make_model(seed=1, clip={"pretrained": str(clip_file)})
    fresh.load_state_dict(torch.load(path, weights_only=False))  # strict: every stream key matches
    assert_same_embeddings(model, fresh, make_batch())
    assert fresh.cnn_stream.text.vocab.words == model.cnn_stream.text.vocab.words


def test_trainable_clip_is_optimised_and_checkpointed():
    model = make_model(clip={"trainable": True})
    assert any(k.startswith("clip.") for k in model.state_dict())
    before = snapshot(model.clip)
    model.train()
    assert model.clip.training
    model.train_step(make_batch(), step_ctx(model))
    moved = changed(before, model.clip)
    assert any(k.startswith("model.visual.") for k in moved) and any(
        k.startswith("model.transformer.") for k in moved
    )
    assert "model.logit_scale" not in moved
    counts = model.parameter_counts()
    assert counts["clip_stream"] > sum(p.numel() for p in model.clip_stream.parameters())


SWITCHES = [
    {"streams": "clip"},
    {"streams": "cnn"},
    {"editors": "off"},
    {"combiner": "sum"},
    {"editors": "off", "combiner": "sum"},
    {"teacher_targets": "target"},
    {"mask_padding": True},
    {"ssg_detach": True, "ssg_alpha": 0.0, "ssg_tau": 0.1},
    {"mutual_weight": 0.0},
    {"mutual_weight": 2.0, "mutual_scale": 5.0},
    {"clip": {"trainable": True}},
    {"clip": {"arch": "tiny-rn", "precision": "fp32"}},
]


@pytest.mark.parametrize("over", SWITCHES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_switch_builds_and_steps(over):
    model = make_model(**copy.deepcopy(over))
    ctx = step_ctx(model)
    params = snapshot(model)
    terms = model.train_step(make_batch(), ctx)
    assert all(torch.isfinite(v) for v in terms.values())
    assert changed(params, model)
    streams = over.get("streams", "both")
    assert set(ctx.optimizers) == ({"clip", "cnn"} if streams == "both" else {streams})
    has_kl = streams == "both" and over.get("mutual_weight", 1.0) > 0
    assert ("clip/kl" in terms or "cnn/kl" in terms) == has_kl
    if over.get("editors") == "off":
        assert model.clip_stream.img_gate is None and not hasattr(model.cnn_stream, "img_mask")
    if over.get("combiner") == "sum":
        assert model.clip_stream.combiner.mlp is None and model.cnn_stream.combiner.mlp is None
    model.eval()
    with torch.no_grad():
        q = model.encode_queries(make_batch().ref, TEXTS)
    assert q.shape == (B, E if streams != "both" else 2 * E) and torch.isfinite(q).all()


def test_mask_padding_makes_queries_independent_of_batch_padding():
    short, long = "make it red", "remove the collar please and add stripes"
    ref = images([0, 1])
    for masked in (True, False):
        model = make_model(streams="cnn", mask_padding=masked)
        model.train_step(make_batch(), step_ctx(model))
        model.eval()
        with torch.no_grad():
            alone = model.encode_queries(ref[:1], [short])
            padded = model.encode_queries(ref, [short, long])[:1]
        assert torch.allclose(alone, padded, atol=1e-5) == masked


def test_parameter_counts_per_stream():
    model = make_model()
    counts = model.parameter_counts()
    assert set(counts) == {"clip_stream", "cnn_stream", "total", "frozen"}
    assert counts["clip_stream"] == sum(p.numel() for p in model.clip_stream.parameters())
    assert counts["cnn_stream"] == sum(p.numel() for p in model.cnn_stream.parameters())
    assert counts["total"] == counts["clip_stream"] + counts["cnn_stream"]
    assert counts["frozen"] == sum(p.numel() for p in model.clip.parameters())


def test_clip_precision_option():
    model = make_model(clip={"precision": "bf16"}).eval()
    with torch.no_grad():  # reduced precision also runs on CPU when asked; outputs stay float32
        g = model.encode_gallery(make_batch().target)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


def test_official_size_builds_without_weights_and_reports_counts():
    """RN50 CLIP + ResNet-50, E = 1024, word_dim 512 (the official configuration), random weights."""
    opts = options(embed_dim=1024, clip={"arch": "RN50"}, cnn={"arch": "resnet50"}, text={"word_dim": 512})
    torch.manual_seed(0)
    model = build_method(opts, BuildContext(train_texts=TEXTS, num_labels=B, image_size=224))
    counts = model.parameter_counts()
    print("DWC RN50 / ResNet-50 parameter counts:", counts)
    d, c = 1024, 1024  # CLIP RN50 output, embed dim
    heads = 2 * (d * c + c)
    gates = 2 * ((2 * c * c + c) + (c * c + c))
    combiner = (2 * c * c + c) + (c + 1)
    assert counts["clip_stream"] == heads + gates + combiner  # 10,493,953
    assert 10e6 < counts["clip_stream"] < 12e6
    resnet50_trunk = 23_508_032  # torchvision ResNet-50 without fc
    assert counts["cnn_stream"] > resnet50_trunk
    assert counts["frozen"] == sum(p.numel() for p in model.clip.parameters()) > 100e6 / 2
    assert model.cnn_stream.img_proj.out_channels == 1024 and model.cnn_stream.img_mask.out_channels == 2048
