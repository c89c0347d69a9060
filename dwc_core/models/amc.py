"""AMC (Zhu et al., TOMM 2023): adaptive multi-expert collaborative composition over image tokens.

The reference image's ``layer4`` map becomes K tokens (bias-free 1×1 conv to D); an LSTM sentence vector s
(0-filled masked max-pool) drives two stacked dynamic-interaction layers. Each layer has its own router giving three
independent sigmoid gates and three experts (Rescell, GlobalCell, StyleCell); the layer output is the gate-weighted
sum. Query = mean of the second layer's tokens; target = mean of the raw target tokens. Loss = CE(10·cos) +
Gram-MSE on [q₁; q] (../shared/reference/baselines.md §1).

Backbone BatchNorm layers keep their running statistics frozen (eval mode) while their affine weights train.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from dwc_core.errors import ConfigError
from dwc_core.models import losses
from dwc_core.models.base import Batch, Method, StepContext, register
from dwc_core.models.encoders import LSTMTextEncoder, Vocabulary, build_cnn, freeze_batchnorm_stats

# ------------------------------------------------------------------------------------------------------- cells


def _broadcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, D) sentence vector → (B, K, D) alongside tokens x."""
    return s.unsqueeze(1).expand(-1, x.size(1), -1)


class Router(nn.Module):
    """g = σ(W₂·ReLU(LN(W₁·[mean_K X; s]))): one independent sigmoid gate per expert (no softmax)."""

    def __init__(self, dim: int, hidden: int, num_experts: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(2 * dim, hidden, bias=False)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, num_experts, bias=False)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        u = torch.cat([x.mean(dim=1), s], dim=1)
        return torch.sigmoid(self.fc2(F.relu(self.norm(self.fc1(u)))))


class Rescell(nn.Module):
    """Expert 0 ("NIN"): parameter-free LayerNorm of the tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class MultiHeadAttention(nn.Module):
    """Self-attention with separate q/k/v projections (bias), scaled softmax, heads concatenated, and *no* output
    projection (as in AMC's code)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d_k)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)
        return (attn @ v).transpose(1, 2).reshape(b, n, d)


class SelfAttentionCell(nn.Module):
    """A = MHA(LN₁(Z)); out = A + FFN(LN₂(A)) with FFN D → D/2 → D. There is no residual from Z."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(z))
        return a + self.ffn(self.norm2(a))


class GlobalCell(nn.Module):
    """Expert 1 ("CRN"): LN_noaffine(SA(Linear([X; s]))), the sentence concatenated to every token."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.fuse = nn.Linear(2 * dim, dim)
        self.sa = SelfAttentionCell(dim, heads)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        z = self.fuse(torch.cat([x, _broadcast(s, x)], dim=2))
        return self.norm(self.sa(z))


class StyleCell(nn.Module):
    """Expert 2 ("GTN"): LN_noaffine(X ⊙ γ(s) + β(s)), γ and β plain Linear(D, D) with default init."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Linear(dim, dim)
        self.beta = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.norm(x * self.gamma(s).unsqueeze(1) + self.beta(s).unsqueeze(1))


class DynamicInteraction(nn.Module):
    """One layer: X' = Σᵢ gᵢ·expertᵢ(X, s) with its own router and its own three experts."""

    def __init__(self, dim: int, hid_router: int, heads: int):
        super().__init__()
        self.router = Router(dim, hid_router, num_experts=3)
        self.experts = nn.ModuleList([Rescell(dim), GlobalCell(dim, heads), StyleCell(dim)])

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.router(x, s)  # (B, 3)
        out = sum(gates[:, i].view(-1, 1, 1) * expert(x, s) for i, expert in enumerate(self.experts))
        return out, gates


class InteractionModule(nn.Module):
    """Two stacked dynamic-interaction layers; returns both layer outputs and both layers' gates."""

    def __init__(self, dim: int, hid_router: int, heads: int, num_layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList([DynamicInteraction(dim, hid_router, heads) for _ in range(num_layers)])

    def forward(self, tokens: torch.Tensor, s: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outs, gates = [], []
        x = tokens
        for layer in self.layers:
            x, g = layer(x, s)
            outs.append(x)
            gates.append(g)
        return outs, gates


# ------------------------------------------------------------------------------------------------------- GloVe


def load_glove(embedding: nn.Embedding, vocab: Vocabulary, path: str) -> int:
    """Copy GloVe vectors (a plain ``word v₁ … v_d`` text file, e.g. glove.840B.300d.txt) into the rows of the words
    in ``vocab``; words not in the file keep their N(0, 1) init. Returns how many rows were set.

    AMC's lookup fallbacks (strip ``-.'``, take the part before ``/``) never apply here: the tokeniser already removed
    every punctuation character from the vocabulary.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"model.text.glove: no such file '{path}'. Give a GloVe .txt file, or null for random init."
        )
    dim = embedding.embedding_dim
    found = 0
    weight = embedding.weight.data
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh):
            parts = line.rstrip().split(" ")
            if lineno == 0 and _vector_width(parts) != dim:
                raise ConfigError(
                    f"model.text.glove: '{path}' holds {_vector_width(parts)}-d vectors but model.text.word_dim = "
                    f"{dim}. Set word_dim to the file's dimension (300 for glove.840B.300d)."
                )
            if len(parts) <= dim:
                continue
            word = " ".join(parts[:-dim])  # a few 840B entries contain spaces
            idx = vocab.index.get(word)
            if idx is None or idx == 0:
                continue
            try:
                vec = [float(v) for v in parts[-dim:]]
            except ValueError:
                raise ConfigError(
                    f"model.text.glove: '{path}' is not a GloVe text file of {dim}-d vectors "
                    f"(model.text.word_dim = {dim}); bad line for '{word}'."
                ) from None
            weight[idx] = torch.tensor(vec, dtype=weight.dtype)
            found += 1
    return found


def _vector_width(parts: list[str]) -> int:
    """How many trailing fields of a GloVe line are numbers (the vector dimension)."""
    n = 0
    for field in reversed(parts[1:]):
        try:
            float(field)
        except ValueError:
            break
        n += 1
    return n


# ------------------------------------------------------------------------------------------------------- method


@register
class AMC(Method):
    name = "amc"

    def __init__(self, opts: dict, ctx):
        super().__init__(opts, ctx)
        dim = int(opts["embed_dim"])
        heads = int(opts["heads"])
        if dim % heads != 0:
            raise ConfigError(f"model.embed_dim = {dim} must be divisible by model.heads = {heads}.")
        self.cnn = build_cnn(opts["cnn"]["arch"], opts["cnn"]["pretrained"])
        self.img_proj = nn.Conv2d(self.cnn.out_channels, dim, kernel_size=1, bias=False)
        vocab = Vocabulary(ctx.train_texts)
        # AMC requires lstm_dim == embed_dim: the sentence vector s meets the tokens directly
        self.text = LSTMTextEncoder(vocab, int(opts["text"]["word_dim"]), dim)
        if opts["text"].get("glove"):
            load_glove(self.text.embedding, vocab, opts["text"]["glove"])
        self.interaction = InteractionModule(dim, int(opts["hid_router"]), heads)
        self.train()

    # ----------------------------------------------------------------------------------------- features
    def train(self, mode: bool = True) -> AMC:
        super().train(mode)
        freeze_batchnorm_stats(self.cnn)
        return self

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images → raw tokens (B, K = h·w, D) from the 1×1 conv over layer4."""
        fmap = self.img_proj(self.cnn(self.prepare_images(images)))
        return fmap.flatten(2).transpose(1, 2)

    def sentence(self, texts: list[str]) -> torch.Tensor:
        out, lengths = self.text(texts)
        return LSTMTextEncoder.masked_max(out, lengths, fill=0.0)

    def compose(self, ref: torch.Tensor, texts: list[str]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Everything the loss and the tests look at: layer outputs, gates, pooled q₁ and q."""
        tokens = self.image_tokens(ref)
        s = self.sentence(texts)
        outs, gates = self.interaction(tokens, s)
        return {"outs": outs, "gates": gates, "q1": outs[0].mean(dim=1), "q": outs[-1].mean(dim=1)}

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tokens(images).mean(dim=1)

    def loss_terms(
        self, ref: torch.Tensor, texts: list[str], target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        out = self.compose(ref, texts)
        q, q1 = out["q"].float(), out["q1"].float()
        t = self.target_features(target).float()
        with torch.autocast(
            device_type=q.device.type, enabled=False
        ):  # losses in fp32 (Gram differences are tiny)
            l_class = losses.batch_based_classification(
                F.normalize(q, dim=1), F.normalize(t, dim=1), scale=10.0
            )
            l_sim = losses.gram_mse(torch.cat([q1, q], dim=1), t)
        total = float(self.opts["class_weight"]) * l_class + float(self.opts["sim_weight"]) * l_sim
        return {"loss": total, "class": l_class, "sim": l_sim}

    # ---------------------------------------------------------------------------------------- interface
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        with ctx.autocast():
            terms = self.loss_terms(batch.ref, batch.texts, batch.target)
        ctx.optimize("main", terms["loss"])
        return {k: v.detach() for k, v in terms.items()}

    def encode_queries(self, ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.compose(ref, texts)["q"].float(), dim=1)

    def encode_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.target_features(images).float(), dim=1)
