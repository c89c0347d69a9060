"""Checks shared by the per-method test files."""

from __future__ import annotations

import torch


def assert_same_embeddings(model, other, batch) -> None:
    """Both models, in eval mode, embed the same queries and gallery images identically."""
    model.eval()
    other.eval()
    with torch.no_grad():
        assert torch.equal(
            model.encode_queries(batch.ref, batch.texts), other.encode_queries(batch.ref, batch.texts)
        )
        assert torch.equal(model.encode_gallery(batch.target), other.encode_gallery(batch.target))


def assert_state_round_trip(make_model, make_batch, step_ctx) -> None:
    """After one step, a differently initialised model loading the state embeds identically."""
    model = make_model(seed=0)
    model.train_step(make_batch(), step_ctx(model))
    other = make_model(seed=1)
    other.load_state_dict(model.state_dict())
    assert_same_embeddings(model, other, make_batch(seed=3))


def eval_loss(model, batch) -> float:
    """The method's loss on ``batch`` in eval mode (no dropout), leaving the model in train mode."""
    model.eval()
    with torch.no_grad():
        value = float(model.loss_terms(batch.ref, batch.texts, batch.target)["loss"])
    model.train()
    return value
