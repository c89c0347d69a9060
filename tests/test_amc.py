"""AMC on a tiny CPU configuration (baselines.md §1.7): D = 32, 8 heads, router 16, 2×2 layer4 map → K = 4."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from method_checks import assert_state_round_trip

from dwc_core.config.experiments import default_config
from dwc_core.errors import ConfigError
from dwc_core.models import BuildContext, build_method
from dwc_core.models.amc import AMC, InteractionModule, MultiHeadAttention, SelfAttentionCell
from dwc_core.models.base import Batch, StepContext
from dwc_core.models.encoders import LSTMTextEncoder

TEXTS = ["make it red", "add a blue square to the left", "remove the small green circle on top right now"]
B, SIZE, D = 3, 32, 32


def make_model(seed: int = 0, **over) -> AMC:
    opts = default_config(dataset="synthetic", method="amc")["model"]
    opts.update(embed_dim=D, hid_router=16, heads=8, cnn={"arch": "tiny", "pretrained": "none"})
    opts["text"] = {"word_dim": 8, "glove": None}
    opts.update(over)
    torch.manual_seed(seed)
    ctx = BuildContext(train_texts=TEXTS, num_labels=B, image_size=SIZE)
    return build_method(opts, ctx)


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ref = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    target = torch.randint(0, 256, (B, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return Batch(ref=ref, target=target, texts=list(TEXTS), labels=torch.arange(B))


def step_ctx(model: AMC, lr: float = 1e-3) -> StepContext:
    trainer = default_config(dataset="synthetic", method="amc")["trainer"]
    trainer.update(lr=lr, weight_decay=0.0)
    return StepContext(model.make_optimizers(trainer), autocast=contextlib.nullcontext)


def bn_buffers(model: AMC) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.cnn.state_dict().items() if "running" in k or "num_batches" in k}


def test_registered_and_options_declared():
    model = make_model()
    assert isinstance(model, AMC) and model.name == "amc"
    assert model.text.lstm.hidden_size == D  # lstm_dim must equal D
    assert model.img_proj.bias is None and model.img_proj.kernel_size == (1, 1)


def test_shapes_and_gates():
    model = make_model()
    batch = make_batch()
    out = model.compose(batch.ref, batch.texts)
    k = (SIZE // 16) ** 2
    assert len(out["outs"]) == 2 and len(out["gates"]) == 2
    for x in out["outs"]:
        assert x.shape == (B, k, D)
    for g in out["gates"]:
        assert g.shape == (B, 3)
        assert bool(((g > 0) & (g < 1)).all())
    # independent sigmoids, not a softmax: rows need not sum to one
    assert not torch.allclose(out["gates"][0].sum(1), torch.ones(B))
    q, t = model.encode_queries(batch.ref, batch.texts), model.encode_gallery(batch.target)
    assert q.shape == (B, D) and t.shape == (B, D)
    assert torch.allclose(q.norm(dim=1), torch.ones(B), atol=1e-5)
    assert torch.allclose(q, F.normalize(out["q"], dim=1))


def test_layers_are_independent_and_mixing_is_gate_weighted_sum():
    model = make_model()
    layers = model.interaction.layers
    assert layers[0].router is not layers[1].router
    assert layers[0].router.fc1.weight.data_ptr() != layers[1].router.fc1.weight.data_ptr()
    torch.manual_seed(1)
    x, s = torch.randn(B, 4, D), torch.randn(B, D)
    out, g = layers[0](x, s)
    manual = sum(g[:, i].view(-1, 1, 1) * e(x, s) for i, e in enumerate(layers[0].experts))
    assert torch.allclose(out, manual, atol=1e-6)
    # router input is [mean_K X ; s]
    r = layers[0].router
    u = torch.cat([x.mean(1), s], 1)
    assert torch.allclose(g, torch.sigmoid(r.fc2(torch.relu(r.norm(r.fc1(u))))))
    # expert 0 is a parameter-free LayerNorm
    assert torch.allclose(layers[0].experts[0](x, s), F.layer_norm(x, (D,)), atol=1e-6)


def test_attention_has_no_output_projection_and_no_residual_from_z():
    mha = MultiHeadAttention(D, 8)
    assert {n.split(".")[0] for n, _ in mha.named_parameters()} == {"q", "k", "v"}
    cell = SelfAttentionCell(D, 8)
    with torch.no_grad():
        cell.ffn[2].weight.zero_()
        cell.ffn[2].bias.zero_()
    z = torch.randn(2, 4, D)
    assert torch.allclose(cell(z), cell.attn(cell.norm1(z)), atol=1e-6)  # no "+ z"


def test_interaction_parameter_count_and_every_parameter_gets_a_gradient():
    module = InteractionModule(D, 16, 8)
    assert (
        sum(p.numel() for p in module.parameters()) == 19_328
    )  # baselines.md §1.7, verified on the original
    model = make_model()
    batch = make_batch()
    terms = model.loss_terms(batch.ref, batch.texts, batch.target)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith("text.embedding"):
            continue  # only the rows of the words in the batch
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    grad = model.text.embedding.weight.grad
    assert grad[1:].abs().sum() > 0
    assert torch.equal(grad[0], torch.zeros(8))  # id 0 only pads here, and padded outputs are masked out


def test_masked_max_pool_fills_padding_with_zero():
    model = make_model()
    model.eval()
    s = model.sentence(TEXTS)
    lengths = [len(model.text.vocab.encode([t])[0][0]) for t in TEXTS]
    assert len(set(lengths)) == 3  # exercises the mask
    for i, text in enumerate(TEXTS):
        out, _ = model.text([text])  # unpadded: the valid outputs are the same
        expected = out[0].max(0).values
        if lengths[i] < max(lengths):
            expected = expected.clamp(min=0)
        assert torch.allclose(s[i], expected, atol=1e-6)
    # the helper itself
    outputs = torch.tensor([[[-1.0, -2.0], [-3.0, 5.0]]])
    assert LSTMTextEncoder.masked_max(outputs, torch.tensor([1])).tolist() == [[0.0, 0.0]]
    assert LSTMTextEncoder.masked_max(outputs, torch.tensor([2])).tolist() == [[-1.0, 5.0]]


def test_target_is_mean_of_raw_tokens_and_losses_match_definition():
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        fmap = model.img_proj(model.cnn(model.prepare_images(batch.target)))
        assert torch.allclose(model.target_features(batch.target), fmap.mean(dim=(2, 3)), atol=1e-5)
        out = model.compose(batch.ref, batch.texts)
        t = fmap.mean(dim=(2, 3))
        terms = model.loss_terms(batch.ref, batch.texts, batch.target)
        cos = F.normalize(out["q"], dim=1) @ F.normalize(t, dim=1).t()
        assert torch.allclose(terms["class"], F.cross_entropy(10 * cos, torch.arange(B)), atol=1e-5)
        c = F.normalize(torch.cat([out["q1"], out["q"]], 1), dim=1)
        tn = F.normalize(t, dim=1)
        assert torch.allclose(terms["sim"], ((c @ c.t() - tn @ tn.t()) ** 2).mean(), atol=1e-6)
        assert torch.allclose(terms["loss"], terms["class"] + terms["sim"])
    weighted = make_model(class_weight=0.5, sim_weight=2.0)
    with torch.no_grad():
        w = weighted.loss_terms(batch.ref, batch.texts, batch.target)
    assert torch.allclose(w["loss"], 0.5 * w["class"] + 2.0 * w["sim"])


def test_train_step_keeps_bn_running_stats_and_updates_weights():
    model = make_model()
    model.train()
    bns = [m for m in model.cnn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.interaction.training
    before_buf = bn_buffers(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model.train_step(make_batch(), step_ctx(model))
    assert set(out) == {"loss", "class", "sim"}
    for k, v in bn_buffers(model).items():
        assert torch.equal(v, before_buf[k]), k
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "cnn.body.1.weight" in changed  # BN affine trains
    assert "img_proj.weight" in changed and "interaction.layers.1.router.fc2.weight" in changed


def test_overfits_a_fixed_batch():
    model = make_model()
    batch = make_batch()
    ctx = step_ctx(model, lr=3e-4)
    first = float(model.train_step(batch, ctx)["loss"])
    for _ in range(19):
        last = float(model.train_step(batch, ctx)["loss"])
    assert last < 0.25 * first


def test_state_dict_round_trip_gives_identical_embeddings():
    assert_state_round_trip(make_model, make_batch, step_ctx)


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="divisible by model.heads"):
        make_model(embed_dim=30)
    with pytest.raises(ConfigError, match="model.text.glove"):
        make_model(text={"word_dim": 8, "glove": "/nonexistent/glove.txt"})


def test_glove_initialises_known_words(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text(
        "red " + " ".join(["0.5"] * 8) + "\nzebra " + " ".join(["1"] * 8) + "\n", encoding="utf-8"
    )
    model = make_model(text={"word_dim": 8, "glove": str(glove)})
    emb = model.text.embedding.weight
    assert torch.equal(emb[model.text.vocab.index["red"]], torch.full((8,), 0.5))
    assert not torch.equal(emb[model.text.vocab.index["blue"]], torch.full((8,), 0.5))
    with pytest.raises(ConfigError, match="word_dim"):
        make_model(text={"word_dim": 4, "glove": str(glove)})
