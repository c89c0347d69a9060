"""ComposeAE (Anwaar et al., WACV 2021): composition by rotating the image feature in complex space by a
text-derived angle, decoded back to image and text space by an autoencoder (../shared/reference/baselines.md §2).

Image: CNN → adaptive average pool → fc → z (d). Text: a *frozen* sentence encoder (here the text tower of a CLIP
model from :mod:`dwc_core.models.clip`, standing in for the original BERT-as-service vectors) → t (d_t), no gradient.

θ = a₁·ρ(proj₁(z, t, c)) + a₀·ρ_conv(proj₂(z, t, c)) with two independent complex projections, a = (1, 10, 1, 1).
Loss = L_base(s·θ̂, s·ẑ_tgt) + 0.1·MSE(dec_img(θ), z) + 0.1·MSE(dec_txt(θ), t) + 0.01·L_base(s·θ̂_conj, s·ẑ_src),
where θ_conj composes the *target* feature with the same text and conjugate c = −1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dwc_core.errors import ConfigError
from dwc_core.models import losses
from dwc_core.models.base import Batch, Method, StepContext, register
from dwc_core.models.encoders import build_cnn

# ------------------------------------------------------------------------------------------------ frozen text


class FrozenTextEncoder(nn.Module):
    """A CLIP text tower used as a fixed sentence encoder: eval mode, no gradient, fp32, one vector per caption.

    The image tower is dropped after loading. With ``cache`` the vectors are memoised per caption string (the
    encoder never changes; the cache is cleared when weights are loaded or the module is moved).
    """

    def __init__(self, arch: str, pretrained: str, cache: bool = True):
        super().__init__()
        from dwc_core.models.clip import build_clip

        try:
            clip = build_clip(arch, pretrained)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("model.clip.", "model.text_encoder.")) from None
        clip.model.visual = nn.Identity()  # text only: free the image tower
        clip.requires_grad_(False)
        clip.eval()
        self.clip = clip
        self.out_dim = clip.embed_dim
        self.use_cache = cache
        self._cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        return super().train(False)  # always eval

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.clip.device
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache] if self.use_cache else list(texts)
        if missing or not self.use_cache:
            with torch.autocast(device_type=device.type, enabled=False):
                feats = self.clip.encode_text(missing).float()
            if not self.use_cache:
                return feats
            self._cache.update(zip(missing, feats, strict=True))
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def _apply(self, *args, **kwargs):
        self._cache.clear()
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)


# -------------------------------------------------------------------------------------------------- modules


class ComplexProjection(nn.Module):
    """φ = MLP(z), δ = MLP(t); rotation re = φ⊙cos δ, im = c·φ⊙sin δ (φ·e^{icδ}).

    Returns concat[re, im] (B, 2d) for the linear mapping and the stacked [φ, δ, z, re, im] (B, 5, d) for the
    convolutional one.
    """

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.img = nn.Sequential(
            nn.BatchNorm1d(dim), nn.Linear(dim, dim), nn.Dropout(0.5), nn.ReLU(), nn.Linear(dim, dim)
        )
        self.txt = nn.Sequential(
            nn.BatchNorm1d(text_dim), nn.Linear(text_dim, dim), nn.ReLU(), nn.Linear(dim, dim)
        )

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, conjugate: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.img(z)
        delta = self.txt(t)
        re = phi * torch.cos(delta)
        im = conjugate * phi * torch.sin(delta)
        return torch.cat([re, im], dim=1), torch.stack([phi, delta, z, re, im], dim=1)


class LinearMapping(nn.Module):
    """ρ: BN(2d) → ReLU → Linear(2d, d) → ReLU → Linear(d, d) on concat[re, im]."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvMapping(nn.Module):
    """ρ_conv: Conv1d(5 → C, k=3, pad 1) over the stacked [φ, δ, z, re, im] → AdaptiveMaxPool1d(P) → flatten (C·P)
    → BN → ReLU → Linear(C·P, d) → ReLU → Linear(d, d). The original has C = 64, P = 16."""

    def __init__(self, dim: int, channels: int = 64, pool: int = 16):
        super().__init__()
        self.conv = nn.Conv1d(5, channels, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveMaxPool1d(pool)
        flat = channels * pool
        self.net = nn.Sequential(
            nn.BatchNorm1d(flat), nn.ReLU(), nn.Linear(flat, dim), nn.ReLU(), nn.Linear(dim, dim)
        )

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.net(self.pool(self.conv(stacked)).flatten(1))


def _decoder(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim)
    )


class ComposeAEComposer(nn.Module):
    """Two independent complex projections, the linear and conv mappings, the learnable fusion weights and the two
    decoders."""

    def __init__(self, dim: int, text_dim: int, conv_channels: int, pool_len: int):
        super().__init__()
        self.a = nn.Parameter(
            torch.tensor([1.0, 10.0, 1.0, 1.0])
        )  # only a[0] (conv) and a[1] (linear) are used
        self.proj_linear = ComplexProjection(dim, text_dim)
        self.proj_conv = ComplexProjection(dim, text_dim)
        self.linear = LinearMapping(dim)
        self.conv = ConvMapping(dim, conv_channels, pool_len)
        self.img_decoder = _decoder(dim, dim)
        self.txt_decoder = _decoder(dim, text_dim)

    def forward(self, z: torch.Tensor, t: torch.Tensor, conjugate: float = 1.0) -> torch.Tensor:
        theta_linear = self.linear(self.proj_linear(z, t, conjugate)[0])
        theta_conv = self.conv(self.proj_conv(z, t, conjugate)[1])
        return self.a[1] * theta_linear + self.a[0] * theta_conv


# --------------------------------------------------------------------------------------------------- method


@register
class ComposeAE(Method):
    name = "composeae"

    def __init__(self, opts: dict, ctx):
        super().__init__(opts, ctx)
        dim = int(opts["embed_dim"])
        self.cnn = build_cnn(opts["cnn"]["arch"], opts["cnn"]["pretrained"])
        self.img_fc = nn.Linear(self.cnn.out_channels, dim)
        te = opts["text_encoder"]
        self.text_encoder = FrozenTextEncoder(te["arch"], te["pretrained"], bool(te["cache"]))
        self.composer = ComposeAEComposer(
            dim, self.text_encoder.out_dim, int(opts["conv_channels"]), int(opts["pool_len"])
        )
        self.norm_scale = nn.Parameter(
            torch.tensor(4.0)
        )  # s, shared by every normalisation inside the losses

    # ------------------------------------------------------------------------------------------ features
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.cnn(self.prepare_images(images))
        return self.img_fc(F.adaptive_avg_pool2d(fmap, 1).flatten(1))

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return self.text_encoder(texts)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The learnable normalisation layer: s·x/‖x‖."""
        return self.norm_scale * F.normalize(x.float(), dim=1)

    def base_loss(self, query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.opts["loss"] == "soft_triplet":
            return losses.soft_triplet(query, target)
        return losses.batch_based_classification(query, target)

    def loss_terms(
        self, ref: torch.Tensor, texts: list[str], target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        z_src = self.image_features(ref)
        z_tgt = self.image_features(target)
        t = self.text_features(texts).to(z_src.dtype)
        theta = self.composer(z_src, t, 1.0)
        theta_conj = self.composer(z_tgt, t, -1.0)  # rotate the target back by the conjugate angle
        img_dec = self.composer.img_decoder(theta)
        txt_dec = self.composer.txt_decoder(theta)
        with torch.autocast(device_type=theta.device.type, enabled=False):  # losses in fp32
            base = self.base_loss(self.normalize(theta), self.normalize(z_tgt))
            rot = self.base_loss(self.normalize(theta_conj), self.normalize(z_src))
            img_rec = F.mse_loss(img_dec.float(), z_src.float())
            txt_rec = F.mse_loss(txt_dec.float(), t.float())
        o = self.opts
        total = (
            base
            + float(o["img_rec_weight"]) * img_rec
            + float(o["txt_rec_weight"]) * txt_rec
            + float(o["rot_weight"]) * rot
        )
        return {"loss": total, "base": base, "img_rec": img_rec, "txt_rec": txt_rec, "rot": rot}

    # ----------------------------------------------------------------------------------------- interface
    def frozen_modules(self):
        return iter((self.text_encoder,))

    def param_groups(self, trainer: dict) -> dict[str, list[dict]]:
        """Original: the pretrained CNN at 0.1× lr; its new fc and everything else at the base lr."""
        backbone = [p for p in self.cnn.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        mult = float(self.opts["backbone_lr_mult"])
        return {"main": [{"params": rest}, {"params": backbone, "lr": trainer["lr"] * mult}]}

    def make_optimizers(self, trainer: dict) -> dict[str, torch.optim.Optimizer]:
        groups = self.param_groups(trainer)["main"]
        lr, wd = trainer["lr"], trainer["weight_decay"]
        if self.opts["optimizer"] == "sgd":
            impl = self.optimizer_impl(trainer, fusable=False)
            return {"main": torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=wd, **impl)}
        return {"main": torch.optim.Adam(groups, lr=lr, weight_decay=wd, **self.optimizer_impl(trainer))}

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        with ctx.autocast():
            terms = self.loss_terms(batch.ref, batch.texts, batch.target)
        ctx.optimize("main", terms["loss"])
        return {k: v.detach() for k, v in terms.items()}

    def encode_queries(self, ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        z = self.image_features(ref)
        theta = self.composer(z, self.text_features(texts).to(z.dtype), 1.0)
        return F.normalize(theta.float(), dim=1)

    def encode_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_features(images).float(), dim=1)
