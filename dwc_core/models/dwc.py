"""DWC — Dynamic Weighted Combiner (Huang et al., AAAI 2024), as the official code runs it (dwc-method.md §2-4).

Two streams trained alternately with mutual (KL) distillation:

* CLIP stream (§2.2): a frozen CLIP gives image/text features; trainable heads (Linear → ReLU → Dropout, then L2),
  two channel-gate editors conditioned on both modalities and an adaptive weighted combiner.
* CNN + LSTM stream (§2.3): a fine-tuned ResNet and a TIRG-style LSTM, the Editable Modality De-equalizer
  (word/region cross-attention, Inception image and text editors, GeM pooling) and the same kind of combiner.

Each stream's loss is SSG contrastive + ``mutual_weight`` · KL(other ‖ self). Per iteration the CLIP stream steps
first with the CNN stream as a (detached, train-mode) teacher, then the CNN stream steps with the just-updated CLIP
stream as teacher. The test-time embedding concatenates both streams (score = sum of the two cosines).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from dwc_core.errors import ConfigError
from dwc_core.models import losses
from dwc_core.models.base import CLIP_MEAN, CLIP_STD, Batch, BuildContext, Method, StepContext, register
from dwc_core.models.blocks import GeM, Inception1d, Inception2d
from dwc_core.models.clip import ClipEncoder, build_clip
from dwc_core.models.encoders import LSTMTextEncoder, Vocabulary, build_cnn

WORD_TEMPERATURE = 7.0  # softmax over words of the word-region affinity
REGION_TEMPERATURE = 4.0  # softmax over regions
DROPOUT = 0.5


def _head(cin: int, dim: int) -> nn.Sequential:
    """CLIP-stream projection: Linear → ReLU → Dropout(0.5) (L2-normalised by the caller)."""
    return nn.Sequential(nn.Linear(cin, dim), nn.ReLU(inplace=True), nn.Dropout(DROPOUT))


def _gate_mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Linear → ReLU → Dropout(0.5) → Linear; a sigmoid is applied by the caller."""
    return nn.Sequential(
        nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(DROPOUT), nn.Linear(hidden, cout)
    )


class WeightedCombiner(nn.Module):
    """q = ℓ2(w·a + (1−w)·b), w = σ(MLP([a; b])) one scalar per sample; ``adaptive=False`` gives ℓ2(a + b)."""

    def __init__(self, dim: int, adaptive: bool):
        super().__init__()
        self.mlp = _gate_mlp(2 * dim, dim, 1) if adaptive else None

    def weight(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
        return None if self.mlp is None else torch.sigmoid(self.mlp(torch.cat([a, b], dim=1)))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        w = self.weight(a, b)
        mixed = a + b if w is None else w * a + (1.0 - w) * b
        return F.normalize(mixed, dim=1)


# ------------------------------------------------------------------------------------------------ CLIP stream
class ClipStream(nn.Module):
    """Trainable part of the CLIP stream, on top of raw CLIP features (§2.2)."""

    def __init__(self, clip_dim: int, dim: int, editors: bool, adaptive: bool):
        super().__init__()
        self.img_fc = _head(clip_dim, dim)
        self.txt_fc = _head(clip_dim, dim)
        self.img_gate = _gate_mlp(2 * dim, dim, dim) if editors else None
        self.txt_gate = _gate_mlp(2 * dim, dim, dim) if editors else None
        self.combiner = WeightedCombiner(dim, adaptive)

    def embed_image(self, clip_img: torch.Tensor) -> torch.Tensor:
        """Gallery/target embedding t_g = ℓ2(img_fc(CLIP_img(I)))."""
        return F.normalize(self.img_fc(clip_img.float()), dim=1)

    def forward(self, clip_img: torch.Tensor, clip_txt: torch.Tensor) -> torch.Tensor:
        """Composed query q_g from the reference image's and the text's CLIP features."""
        u = self.embed_image(clip_img)
        v = F.normalize(self.txt_fc(clip_txt.float()), dim=1)
        if self.img_gate is not None:
            joint = torch.cat([u, v], dim=1)
            u, v = torch.sigmoid(self.img_gate(joint)) * u, torch.sigmoid(self.txt_gate(joint)) * v
        return self.combiner(u, v)


# ------------------------------------------------------------------------------------------ CNN + LSTM stream
class CnnStream(nn.Module):
    """ResNet + LSTM with the Editable Modality De-equalizer (§2.3).

    Channel widths follow the backbone (C = 2048 for ResNet-50) and the embedding size E (= LSTM hidden, 1024
    officially): Î = ReLU(Inc2d(C→E)(F)); M_I = σ(Inc2d(2E→C)([Î; S])); R_I = ReLU(Inc2d(E→C)(S));
    M_T = σ(Inc1d(2E→E)([Hᵀ; V])); R_T = ReLU(Inc1d(E→E)(V)).
    """

    def __init__(
        self, opts: dict, vocab: Vocabulary, dim: int, editors: bool, adaptive: bool, mask_padding: bool
    ):
        super().__init__()
        self.backbone = build_cnn(opts["cnn"]["arch"], opts["cnn"]["pretrained"])
        c = int(self.backbone.out_channels)
        self.text = LSTMTextEncoder(vocab, int(opts["text"]["word_dim"]), dim)
        self.mask_padding = mask_padding
        if editors:
            self.img_proj = Inception2d(c, dim)
            self.img_mask = Inception2d(2 * dim, c)
            self.img_res = Inception2d(dim, c)
            self.txt_mask = Inception1d(2 * dim, dim)
            self.txt_res = Inception1d(dim, dim)
        self.editors = editors
        self.img_fc = nn.Linear(c, dim)  # shared by the query image branch and the target branch
        self.txt_fc = nn.Linear(dim, dim)
        self.gem_query = GeM()
        self.gem_target = GeM()
        self.gem_text = GeM()
        self.combiner = WeightedCombiner(dim, adaptive)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Target/gallery embedding t_l = ℓ2(img_fc(GeM(F(I))))."""
        return F.normalize(self.img_fc(self.gem_target(self.backbone(images)).float()), dim=1)

    def forward(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Composed query q_l."""
        fmap = self.backbone(images)  # (N, C, h, w)
        words, lengths = self.text(texts)  # (N, L, E)
        mask = None
        if self.mask_padding:
            mask = torch.arange(words.size(1), device=words.device).view(1, -1) < lengths.view(
                -1, 1
            )  # (N, L)
        words_t = words.transpose(1, 2)  # (N, E, L)
        if self.editors:
            fmap, words_t = self.edit(fmap, words, words_t, mask)
        f_img = self.img_fc(self.gem_query(fmap).float())
        f_txt = self.txt_fc(self.gem_text(words_t, mask).float())
        return self.combiner(f_img, f_txt)

    def edit(
        self, fmap: torch.Tensor, words: torch.Tensor, words_t: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Editable Modality De-equalizer: cross-modal attention, then the image and text editors."""
        n, _, h, w = fmap.shape
        regions = F.relu(self.img_proj(fmap))  # Î: (N, E, h, w)
        regions_flat = regions.flatten(2)  # (N, E, R)
        affinity = torch.bmm(words, regions_flat)  # A: (N, L, R), unnormalised
        word_logits = affinity / WORD_TEMPERATURE
        if mask is not None:
            word_logits = word_logits.masked_fill(~mask.unsqueeze(2), float("-inf"))
        attn_words = torch.softmax(word_logits, dim=1)  # α_w: over words
        attn_regions = torch.softmax(affinity / REGION_TEMPERATURE, dim=2)  # α_r: over regions
        # image editor: text attended per region
        text_per_region = torch.bmm(words_t, attn_words)  # S: (N, E, R)
        s_map = text_per_region.view(n, -1, h, w)
        gate_img = torch.sigmoid(self.img_mask(torch.cat([regions, s_map], dim=1)))
        fmap = gate_img * fmap + F.relu(self.img_res(s_map))
        # text editor: image attended per word
        image_per_word = torch.bmm(regions_flat, attn_regions.transpose(1, 2))  # V: (N, E, L)
        keep = None if mask is None else mask.unsqueeze(1).to(words_t.dtype)  # (N, 1, L)
        if keep is not None:  # padded words act like the zero padding past the end of the sentence
            words_t, image_per_word = words_t * keep, image_per_word * keep
        gate_txt = torch.sigmoid(self.txt_mask(torch.cat([words_t, image_per_word], dim=1), keep))
        words_t = gate_txt * words_t + F.relu(self.txt_res(image_per_word, keep))
        return fmap, words_t


# ---------------------------------------------------------------------------------------------------- method
@register
class DWC(Method):
    name = "dwc"
    image_mean = CLIP_MEAN  # the official code feeds CLIP-normalised images to both streams
    image_std = CLIP_STD

    def __init__(self, opts: dict, ctx: BuildContext):
        super().__init__(opts, ctx)
        dim = int(opts["embed_dim"])
        if dim % 8:
            raise ConfigError(f"model.embed_dim = {dim}: DWC's Inception blocks need a multiple of 8.")
        streams = opts["streams"]
        self.use_clip = streams in ("both", "clip")
        self.use_cnn = streams in ("both", "cnn")
        editors = opts["editors"] == "on"
        adaptive = opts["combiner"] == "adaptive"
        self.clip_trainable = bool(opts["clip"]["trainable"])
        self.clip: ClipEncoder | None = None
        self.clip_stream: ClipStream | None = None
        self.cnn_stream: CnnStream | None = None
        if self.use_clip:
            self.clip = build_clip(opts["clip"]["arch"], opts["clip"]["pretrained"])
            if not self.clip_trainable:
                self.clip.requires_grad_(False)
                self.clip.eval()
                # frozen CLIP stays out of checkpoints (rebuilt from model.clip.pretrained), as in the official code
                self.clip.register_state_dict_post_hook(_drop_own_keys)
                self.register_load_state_dict_post_hook(_ignore_missing_clip_keys)
            else:
                for name in ("logit_scale", "logit_bias"):  # unused by DWC
                    p = getattr(self.clip.model, name, None)
                    if isinstance(p, nn.Parameter):
                        p.requires_grad_(False)
            self.clip_stream = ClipStream(self.clip.embed_dim, dim, editors, adaptive)
        if self.use_cnn:
            vocab = Vocabulary(ctx.train_texts)
            self.cnn_stream = CnnStream(opts, vocab, dim, editors, adaptive, bool(opts["mask_padding"]))

    # ---------------------------------------------------------------------------------------------- CLIP
    def frozen_modules(self):
        if self.clip is not None and not self.clip_trainable:
            yield self.clip

    def _clip_precision(self, device: torch.device):
        """Autocast for the frozen CLIP: reduced precision only on a GPU (auto), or as model.clip.precision says."""
        if self.clip_trainable:
            return nullcontext()
        choice = self.opts["clip"]["precision"]
        if choice == "auto":
            if device.type != "cuda":
                return nullcontext()
            choice = "bf16" if self.ctx.precision == "bf16" else "fp16"
        if choice == "fp32":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=torch.bfloat16 if choice == "bf16" else torch.float16)

    def _clip_image(self, x: torch.Tensor) -> torch.Tensor:
        with (
            self._clip_precision(x.device),
            torch.set_grad_enabled(self.clip_trainable and torch.is_grad_enabled()),
        ):
            return self.clip.encode_image(x).float()

    def _clip_text(self, texts: list[str], device: torch.device) -> torch.Tensor:
        with (
            self._clip_precision(device),
            torch.set_grad_enabled(self.clip_trainable and torch.is_grad_enabled()),
        ):
            return self.clip.encode_text(texts).float()

    # -------------------------------------------------------------------------------------------- training
    def param_groups(self, trainer: dict) -> dict[str, list[dict]]:
        groups: dict[str, list[dict]] = {}
        if self.use_clip:
            params = [p for p in self.clip_stream.parameters() if p.requires_grad]
            if self.clip_trainable:
                params += [p for p in self.clip.parameters() if p.requires_grad]
            groups["clip"] = [{"params": params}]
        if self.use_cnn:
            groups["cnn"] = [{"params": [p for p in self.cnn_stream.parameters() if p.requires_grad]}]
        return groups

    def _mutual(self) -> bool:
        return self.use_clip and self.use_cnn and float(self.opts["mutual_weight"]) > 0

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The alternating schedule of §4: CLIP-stream step (CNN teacher), then CNN-stream step (CLIP teacher).

        As in the official loop, each step first runs the other stream as teacher (train mode: dropout on, BN
        statistics updating; no gradient), then its own forward pass, then its optimizer step.
        """
        ref, tgt = self.prepare_images(batch.ref), self.prepare_images(batch.target)
        texts, labels = batch.texts, batch.labels
        out: dict[str, torch.Tensor] = {}
        frozen_feats = None
        if self.use_clip:
            with ctx.autocast():
                teacher = self._cnn_teacher(ref, tgt, texts) if self._mutual() else None
                clip_feats = self._clip_features(ref, tgt, texts)
                if not self.clip_trainable:  # frozen CLIP is deterministic: reuse for the CNN step's teacher
                    frozen_feats = clip_feats
                q = self.clip_stream(clip_feats[0], clip_feats[1])
                t = self.clip_stream.embed_image(clip_feats[2])
                loss = self._stream_loss("clip", q, t, labels, teacher, out)
            ctx.optimize("clip", loss)
        if self.use_cnn:
            with ctx.autocast():
                teacher = self._clip_teacher(ref, tgt, texts, frozen_feats) if self._mutual() else None
                q = self.cnn_stream(ref, texts)
                t = self.cnn_stream.embed_image(tgt)
                loss = self._stream_loss("cnn", q, t, labels, teacher, out)
            ctx.optimize("cnn", loss)
        out["loss"] = sum(out[f"{s}/loss"] for s in ("clip", "cnn") if f"{s}/loss" in out)
        return out

    def _stream_loss(self, stream: str, q, t, labels, teacher, out: dict) -> torch.Tensor:
        """SSG + mutual_weight · KL(teacher ‖ self); fills ``out`` with the detached terms."""
        o = self.opts
        q, t = q.float(), t.float()
        ssg = losses.ssg_contrastive(
            q,
            t,
            labels,
            tau=float(o["ssg_tau"]),
            alpha=float(o["ssg_alpha"]),
            detach_soft=bool(o["ssg_detach"]),
        )
        loss = ssg
        if teacher is not None:
            kl = losses.mutual_kl(
                q, t, teacher[0].float(), teacher[1].float(), scale=float(o["mutual_scale"])
            )
            loss = ssg + float(o["mutual_weight"]) * kl
            out[f"{stream}/kl"] = kl.detach()
        out[f"{stream}/ssg"], out[f"{stream}/loss"] = ssg.detach(), loss.detach()
        return loss

    def _teacher_side(self, ref: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """The image the teacher embeds as its "target": the reference as coded officially, or the real target."""
        return tgt if self.opts["teacher_targets"] == "target" else ref

    def _clip_features(self, ref: torch.Tensor, tgt: torch.Tensor, texts: list[str]):
        """Raw CLIP features of (reference, text, target); without gradient unless CLIP is trainable."""
        return self._clip_image(ref), self._clip_text(texts, ref.device), self._clip_image(tgt)

    @torch.no_grad()
    def _cnn_teacher(self, ref: torch.Tensor, tgt: torch.Tensor, texts: list[str]):
        return self.cnn_stream(ref, texts), self.cnn_stream.embed_image(self._teacher_side(ref, tgt))

    @torch.no_grad()
    def _clip_teacher(self, ref: torch.Tensor, tgt: torch.Tensor, texts: list[str], feats=None):
        """The just-updated CLIP stream as teacher; ``feats`` = the frozen CLIP's features of this batch."""
        if feats is None:  # trainable CLIP: features of the updated encoder
            c_ref, c_txt = self._clip_image(ref), self._clip_text(texts, ref.device)
            c_side = self._clip_image(self._teacher_side(ref, tgt))
        else:
            c_ref, c_txt, c_tgt = feats
            c_side = c_tgt if self.opts["teacher_targets"] == "target" else c_ref
        return self.clip_stream(c_ref, c_txt), self.clip_stream.embed_image(c_side)

    # ------------------------------------------------------------------------------------------ embeddings
    def encode_queries(self, ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        x = self.prepare_images(ref)
        parts = []
        if self.use_clip:
            parts.append(self.clip_stream(self._clip_image(x), self._clip_text(texts, x.device)).float())
        if self.use_cnn:
            parts.append(self.cnn_stream(x, texts).float())
        return torch.cat(parts, dim=1)

    def encode_gallery(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare_images(images)
        parts = []
        if self.use_clip:
            parts.append(self.clip_stream.embed_image(self._clip_image(x)).float())
        if self.use_cnn:
            parts.append(self.cnn_stream.embed_image(x).float())
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------------------------------------ info
    def parameter_counts(self) -> dict[str, int]:
        def trainable(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters() if p.requires_grad)

        out = {}
        if self.use_clip:
            out["clip_stream"] = trainable(self.clip_stream) + (
                trainable(self.clip) if self.clip_trainable else 0
            )
        if self.use_cnn:
            out["cnn_stream"] = trainable(self.cnn_stream)
        out["total"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        out["frozen"] = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return out


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _ignore_missing_clip_keys(module: nn.Module, incompatible) -> None:
    missing = incompatible.missing_keys
    missing[:] = [k for k in missing if not (k.startswith("clip.") or ".clip." in k)]
