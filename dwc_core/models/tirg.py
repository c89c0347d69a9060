"""TIRG (Vo et al., CVPR 2019): gated residual composition of CNN image and LSTM text features.

f = a₀·σ(gate([φ_img; φ_txt])) ⊙ φ_img + a₁·res([φ_img; φ_txt]), a initialised to (1, 10); a learnable
normalisation scale s (init 4) multiplies the L2-normalised features inside the loss (see
../shared/reference/baselines.md §3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dwc_core.models import losses
from dwc_core.models.base import Batch, Method, StepContext, register
from dwc_core.models.encoders import LSTMTextEncoder, Vocabulary, build_cnn


class TirgComposer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0, 10.0, 1.0, 1.0]))
        self.gate = nn.Sequential(nn.BatchNorm1d(2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.res = nn.Sequential(
            nn.BatchNorm1d(2 * dim),
            nn.ReLU(),
            nn.Linear(2 * dim, 2 * dim),
            nn.ReLU(),
            nn.Linear(2 * dim, dim),
        )

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        x = torch.cat([img, txt], dim=1)
        return self.a[0] * torch.sigmoid(self.gate(x)) * img + self.a[1] * self.res(x)


@register
class TIRG(Method):
    name = "tirg"

    def __init__(self, opts: dict, ctx):
        super().__init__(opts, ctx)
        dim = int(opts["embed_dim"])
        self.cnn = build_cnn(opts["cnn"]["arch"], opts["cnn"]["pretrained"])
        self.img_fc = nn.Linear(self.cnn.out_channels, dim)
        vocab = Vocabulary(ctx.train_texts)
        self.text = LSTMTextEncoder(vocab, int(opts["text"]["word_dim"]), int(opts["text"]["hidden"]))
        self.txt_fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(self.text.out_dim, dim))
        self.composer = TirgComposer(dim)
        self.norm_scale = nn.Parameter(torch.tensor(4.0))

    # features
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.cnn(self.prepare_images(images))
        return self.img_fc(F.adaptive_avg_pool2d(fmap, 1).flatten(1))

    def text_features(self, texts: list[str]) -> torch.Tensor:
        out, lengths = self.text(texts)
        return self.txt_fc(LSTMTextEncoder.last(out, lengths))

    def compose(self, ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.composer(self.image_features(ref), self.text_features(texts))

    # interface
    def param_groups(self, trainer: dict) -> dict[str, list[dict]]:
        backbone = list(self.cnn.parameters())
        ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        mult = float(self.opts.get("backbone_lr_mult", 1.0))
        return {"main": [{"params": rest}, {"params": backbone, "lr": trainer["lr"] * mult}]}

    def make_optimizers(self, trainer: dict) -> dict[str, torch.optim.Optimizer]:
        groups = self.param_groups(trainer)["main"]
        if self.opts.get("optimizer", "adam") == "sgd":
            opt = torch.optim.SGD(
                groups, lr=trainer["lr"], momentum=0.9, weight_decay=trainer["weight_decay"],
                **self.optimizer_impl(trainer, fusable=False),
            )  # fmt: skip
        else:
            opt = torch.optim.Adam(
                groups, lr=trainer["lr"], weight_decay=trainer["weight_decay"], **self.optimizer_impl(trainer)
            )
        return {"main": opt}

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        with ctx.autocast():
            f = self.compose(batch.ref, batch.texts)
            phi = self.image_features(batch.target)
        with torch.autocast(device_type=f.device.type, enabled=False):  # the loss in fp32
            q = self.norm_scale * F.normalize(f.float(), dim=1)
            t = self.norm_scale * F.normalize(phi.float(), dim=1)
            if self.opts["loss"] == "soft_triplet":
                loss = losses.soft_triplet(q, t)
            else:
                loss = losses.batch_based_classification(q, t)
        ctx.optimize("main", loss)
        return {"loss": loss.detach()}

    def encode_queries(self, ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.compose(ref, texts).float(), dim=1)

    def encode_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_features(images).float(), dim=1)
