"""CLIP4Cir (Baldrati et al.): a Combiner over raw CLIP features (../shared/reference/baselines.md §4).

Stage 2 (the default): CLIP frozen, the Combiner trained from scratch with CE(100·cos) query→target, in-batch
negatives. The Combiner projects the *raw* (unnormalised) text and reference-image features, concatenates them
text first, and outputs L2norm(v + λ·t + (1−λ)·i) with a learned per-sample λ ∈ (0, 1).

``clip.trainable: true`` fine-tunes CLIP together with the combining function (stage-1-like; with
``combiner: sum`` it is exactly stage 1, ŝ = L2norm(i + t)). CLIP stays in eval mode in both stages (the original
keeps its BatchNorm frozen during fine-tuning). ``combiner: sum`` with a frozen CLIP has nothing to train: it is the
zero-shot baseline (evaluate with ``trainer.epochs: 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dwc_core.errors import ConfigError
from dwc_core.models.base import CLIP_MEAN, CLIP_STD, Batch, Method, StepContext, register


class Combiner(nn.Module):
    """t_p, i_p = Dropout(ReLU(Linear(C→P)(·))); u = [t_p; i_p] (text first);
    v = Linear(H→C)(Dropout(ReLU(Linear(2P→H)(u)))); λ = σ(Linear(H→1)(Dropout(ReLU(Linear(2P→H)(u)))));
    output = L2norm(v + λ·t + (1−λ)·i)."""

    def __init__(self, clip_dim: int, projection_dim: int, hidden_dim: int, dropout: float = 0.5):
        super().__init__()
        self.text_proj = nn.Linear(clip_dim, projection_dim)
        self.image_proj = nn.Linear(clip_dim, projection_dim)
        self.drop_text = nn.Dropout(dropout)
        self.drop_image = nn.Dropout(dropout)
        self.combiner_layer = nn.Linear(2 * projection_dim, hidden_dim)
        self.drop_combined = nn.Dropout(dropout)
        self.output_layer = nn.Linear(hidden_dim, clip_dim)
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
            nn.Sigmoid(),
        )

    def projected(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """u = concat[t_p, i_p], text first (B, 2P)."""
        t_p = self.drop_text(F.relu(self.text_proj(text)))
        i_p = self.drop_image(F.relu(self.image_proj(image)))
        return torch.cat([t_p, i_p], dim=-1)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw CLIP features → (unit-norm query (B, C), λ (B, 1))."""
        u = self.projected(image, text)
        v = self.output_layer(self.drop_combined(F.relu(self.combiner_layer(u))))
        lam = self.dynamic_scalar(u)
        return F.normalize(v + lam * text + (1 - lam) * image, dim=-1), lam


@register
class CLIP4Cir(Method):
    name = "clip4cir"
    image_mean = CLIP_MEAN
    image_std = CLIP_STD

    def __init__(self, opts: dict, ctx):
        super().__init__(opts, ctx)
        from dwc_core.models.clip import build_clip

        copts = opts["clip"]
        self.trainable_clip = bool(copts["trainable"])
        self.clip = build_clip(copts["arch"], copts["pretrained"])
        self.clip.requires_grad_(self.trainable_clip)
        self.clip.eval()
        c = self.clip.embed_dim
        self.logit_scale = float(opts["logit_scale"])
        self.combiner: Combiner | None = None
        if opts["combiner"] == "combiner":
            p = int(opts["projection_dim"] or 4 * c)
            h = int(opts["hidden_dim"] or 8 * c)
            self.combiner = Combiner(c, p, h, float(opts["dropout"]))

    # ------------------------------------------------------------------------------------------ features
    def train(self, mode: bool = True) -> CLIP4Cir:
        super().train(mode)
        self.clip.eval()  # both stages keep CLIP in eval mode (frozen BatchNorm, no dropout)
        return self

    def _clip(self, fn, *args) -> torch.Tensor:
        if self.trainable_clip and torch.is_grad_enabled():
            return fn(*args)
        with torch.no_grad():
            return fn(*args)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) CLIP image features (B, C), fp32."""
        return self._clip(self.clip.encode_image, self.prepare_images(images)).float()

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return self._clip(self.clip.encode_text, list(texts)).float()

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.combiner is None:
            return F.normalize(image + text, dim=-1)
        return self.combiner(image, text)[0]

    def loss_terms(
        self, ref: torch.Tensor, texts: list[str], target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        query = self.combine(self.image_features(ref), self.text_features(texts)).float()
        gallery = F.normalize(self.image_features(target), dim=-1)
        with torch.autocast(device_type=query.device.type, enabled=False):  # 100·cos in fp32
            logits = self.logit_scale * query @ gallery.t()
            loss = F.cross_entropy(logits, torch.arange(query.size(0), device=query.device))
        return {"loss": loss}

    # ----------------------------------------------------------------------------------------- interface
    def frozen_modules(self):
        return iter(() if self.trainable_clip else (self.clip,))

    def param_groups(self, trainer: dict) -> dict[str, list[dict]]:
        groups: list[dict] = []
        if self.combiner is not None:
            groups.append({"params": list(self.combiner.parameters())})
        if self.trainable_clip:
            mult = float(self.opts["clip"]["lr_mult"])
            groups.append({"params": [p for p in self.clip.parameters()], "lr": trainer["lr"] * mult})
        return {"main": groups} if groups else {}

    def make_optimizers(self, trainer: dict) -> dict[str, torch.optim.Optimizer]:
        """Adam (stage 2: lr 2e-5, no weight decay) or AdamW (stage 1: lr 2e-6, eps 1e-7, weight decay 0.01).
        Nothing to train (sum over a frozen CLIP) → no optimizer."""
        groups = self.param_groups(trainer).get("main")
        if not groups:
            if int(trainer.get("epochs", 0)) > 0:
                raise ConfigError(
                    "model: clip4cir with combiner: sum and clip.trainable: false has no trainable parameters (it is "
                    "the zero-shot baseline). Set trainer.epochs: 0 to evaluate it, or clip.trainable: true to "
                    "fine-tune CLIP."
                )
            return {}
        lr, wd = trainer["lr"], trainer["weight_decay"]
        impl = self.optimizer_impl(trainer)
        if self.opts["optimizer"] == "adamw":
            return {"main": torch.optim.AdamW(groups, lr=lr, eps=1e-7, weight_decay=wd, **impl)}
        return {"main": torch.optim.Adam(groups, lr=lr, weight_decay=wd, **impl)}

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        if "main" not in ctx.optimizers:
            raise ConfigError(
                "clip4cir with combiner: sum and clip.trainable: false has no trainable parameters: it is the "
                "zero-shot baseline. Set trainer.epochs: 0 to evaluate it, or clip.trainable: true to fine-tune CLIP."
            )
        with ctx.autocast():
            terms = self.loss_terms(batch.ref, batch.texts, batch.target)
        ctx.optimize("main", terms["loss"])
        return {k: v.detach() for k, v in terms.items()}

    def encode_queries(self, ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.combine(self.image_features(ref), self.text_features(texts)).float()

    def encode_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_features(images), dim=-1)
