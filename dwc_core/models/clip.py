"""CLIP image/text encoders through open_clip, with offline-friendly weight loading.

:func:`build_clip` accepts any open_clip architecture name (``RN50``, ``ViT-B-32``, ...) plus the tiny CPU configs
shipped in ``clip_configs/`` (``tiny``: a 2-layer ViT at 32 px; ``tiny-rn``: a one-block-per-stage ModifiedResNet at
64 px). ``pretrained`` is an open_clip tag (downloaded by open_clip), a local weights file, or ``none`` (random
weights).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dwc_core.errors import ConfigError

CONFIG_DIR = Path(__file__).with_name("clip_configs")
LOCAL_ARCHS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

_registered = False


def _open_clip():
    """Import open_clip and register the shipped tiny configs (once)."""
    global _registered
    import open_clip

    if not _registered:
        for path in sorted(CONFIG_DIR.glob("*.json")):
            open_clip.add_model_config(path)
        _registered = True
    return open_clip


def _is_none(pretrained: str | None) -> bool:
    return pretrained is None or str(pretrained).strip().lower() in ("", "none", "null", "random")


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(("~", ".")) or value.lower().endswith(WEIGHT_SUFFIXES)


class ClipEncoder(nn.Module):
    """An open_clip model with list-of-strings text encoding and fp32 outputs.

    ``encode_image`` takes images already normalised with CLIP's mean/std; inputs whose spatial size differs from
    ``image_size`` are resized (bicubic) first, since CLIP's positional embeddings fix the input size.
    """

    def __init__(self, model: nn.Module, tokenizer, arch: str, pretrained: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.arch = arch
        self.pretrained = pretrained
        size = getattr(model.visual, "image_size", None)
        if isinstance(size, list | tuple):
            size = size[0]
        self.image_size = int(size)
        self.context_length = int(getattr(model, "context_length", None) or tokenizer.context_length)
        self.embed_dim = int(self._probe_embed_dim())

    def _probe_embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, nn.Parameter):
            return proj.shape[1]
        visual_dim = getattr(self.model.visual, "output_dim", None)
        if visual_dim is not None:
            return visual_dim
        with torch.no_grad():
            return self.encode_text(["a"]).shape[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, context_length), truncated to the model's context length."""
        return self.tokenizer(list(texts), context_length=self.context_length)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x.float(), size=(self.image_size, self.image_size), mode="bicubic", align_corners=False
            )
        return self.model.encode_image(x.to(self.dtype)).float()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenize(texts).to(self.device)
        return self.model.encode_text(tokens).float()

    def forward(self, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(texts)


def _torchscript_state(path: str) -> dict[str, torch.Tensor] | None:
    """The state_dict of an OpenAI TorchScript checkpoint, or None when ``path`` is not one."""
    try:
        with zipfile.ZipFile(path) as zf:
            scripted = any(name.endswith("/constants.pkl") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return None
    if not scripted:
        return None
    module = torch.jit.load(path, map_location="cpu")
    drop = ("input_resolution", "context_length", "vocab_size")
    return {k: v for k, v in module.state_dict().items() if k not in drop}


def _load_weights_file(open_clip, model: nn.Module, path: str, what: str, state: dict | None) -> None:
    try:
        if state is not None:
            model.load_state_dict(state, strict=True)
        else:
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    except RuntimeError as exc:
        if "state_dict" in str(exc) or "size mismatch" in str(exc):
            raise ConfigError(f"{what}: '{path}' does not match the architecture: {exc}") from None
        raise ConfigError(f"{what}: '{path}' is not a loadable weights file ({exc}).") from None
    except Exception as exc:  # unpickling errors, safetensors header errors, ...
        raise ConfigError(
            f"{what}: '{path}' is not a loadable weights file ({type(exc).__name__}: {exc})."
        ) from None


def build_clip(arch: str, pretrained: str | None = "none", precision: str = "fp32") -> ClipEncoder:
    """Build an open_clip model. ``pretrained``: an open_clip tag (e.g. ``openai``), a local state_dict file
    (.pt/.pth/.bin/.safetensors, or an OpenAI TorchScript checkpoint), or ``none``/None for random weights.

    Raises :class:`ConfigError` for an unknown architecture or tag, an unreadable file, or a failed download.
    """
    open_clip = _open_clip()
    arch = str(arch).replace("/", "-")  # OpenAI spelling ViT-B/32 -> ViT-B-32
    if arch not in open_clip.list_models():
        known = ", ".join(m for m in open_clip.list_models() if m.startswith(("RN", "ViT-B", "tiny")))
        raise ConfigError(
            f"model.clip.arch = {arch!r} is not an open_clip architecture. Examples: {known} "
            f"(open_clip.list_models() lists all)."
        )
    kwargs = {"precision": precision, "device": "cpu"}
    what = f"model.clip.pretrained ({arch})"
    label = "none"
    if _is_none(pretrained):
        model = open_clip.create_model(arch, pretrained=None, **kwargs)
    else:
        pretrained = str(pretrained)
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        if tag_cfg:
            label = pretrained
            try:
                model = open_clip.create_model(
                    arch,
                    pretrained=pretrained,
                    force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                    **kwargs,
                )
            except Exception as exc:
                raise ConfigError(
                    f"{what}: downloading the CLIP weights '{pretrained}' failed ({type(exc).__name__}: {exc}). "
                    f"This machine may be offline: download the checkpoint elsewhere and point to the local file "
                    f"with model.clip.pretrained: /path/to/file (a .pt/.pth/.bin/.safetensors state_dict), "
                    f"or use pretrained: none for random weights."
                ) from None
        else:
            weights_file = os.path.expanduser(pretrained)
            if not os.path.isfile(weights_file):
                tags = open_clip.list_pretrained_tags_by_model(arch)
                kind = "file" if _looks_like_path(pretrained) else "tag or file"
                raise ConfigError(
                    f"{what} = {pretrained!r}: no such {kind}. Allowed: none | a path to a local weights file"
                    + (f" | an open_clip tag of {arch}: {', '.join(tags)}" if tags else "")
                    + "."
                )
            label = weights_file
            # OpenAI's TorchScript checkpoints were trained with QuickGELU
            state = _torchscript_state(weights_file)
            model = open_clip.create_model(
                arch, pretrained=None, force_quick_gelu=state is not None, **kwargs
            )
            _load_weights_file(open_clip, model, weights_file, what, state)
    tokenizer = open_clip.get_tokenizer(arch)
    return ClipEncoder(model, tokenizer, arch, label)
