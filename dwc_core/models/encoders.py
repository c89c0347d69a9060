"""Image and text encoders shared by the methods: torchvision CNNs (+ a tiny CPU CNN), a TIRG-style vocabulary
and LSTM text encoder."""

from __future__ import annotations

import os
import string

import torch
from torch import nn

from dwc_core.errors import ConfigError

# ------------------------------------------------------------------------------------------------------ CNNs


class TinyCNN(nn.Module):
    """A small residual-free CNN for CPU tests and the demo: four stride-2 conv blocks."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.out_channels = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc: returns the layer4 feature map (N, C, h, w)."""

    def __init__(self, arch: str, pretrained: str):
        super().__init__()
        import torchvision

        ctor = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}[arch]
        weights = None
        if pretrained == "imagenet":
            weights = {"resnet18": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V1"}[arch]
        try:
            net = ctor(weights=weights)
        except Exception as exc:  # network failures come as URLError/RuntimeError/OSError
            raise ConfigError(
                f"cannot download the ImageNet weights of {arch} ({type(exc).__name__}: {exc}). This machine may "
                f"have no internet access: download them elsewhere and set model.cnn.pretrained to the local "
                f".pth file, or use pretrained: none."
            ) from None
        if pretrained not in ("imagenet", "none"):
            load_state_dict_file(net, pretrained, what=f"model.cnn.pretrained ({arch})", strict=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.out_channels = net.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


def build_cnn(arch: str, pretrained: str = "none") -> nn.Module:
    """A CNN backbone returning a feature map; ``pretrained`` is imagenet | none | a path to a state_dict."""
    if arch == "tiny":
        net = TinyCNN()
        if pretrained not in ("none", "imagenet"):
            load_state_dict_file(net, pretrained, what="model.cnn.pretrained (tiny)")
        return net
    if arch in ("resnet18", "resnet50"):
        return ResNetBackbone(arch, pretrained)
    raise ConfigError(f"model.cnn.arch = {arch!r} is not supported. Allowed: resnet18 | resnet50 | tiny.")


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Put every BatchNorm layer inside ``module`` in eval mode: running statistics are used and not updated,
    while the affine weights stay trainable (AMC's backbone). Call it after every ``train()``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def load_state_dict_file(module: nn.Module, path: str, what: str, strict: bool = True) -> None:
    """Load weights from a local file (a state_dict, or a checkpoint holding one under 'state_dict'/'model')."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"{what}: no such file '{path}'. Allowed: imagenet | none | a path to a .pth state_dict."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{what}: '{path}' is not a loadable PyTorch weights file ({exc}).") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
    try:
        result = module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise ConfigError(f"{what}: '{path}' does not match the architecture: {exc}") from None
    if not strict and result is not None:
        own = set(module.state_dict())
        matched = own - set(result.missing_keys)
        if not matched:
            raise ConfigError(f"{what}: '{path}' shares no parameter names with the architecture.")


# -------------------------------------------------------------------------------------------------------- text
_PUNCT = str.maketrans("", "", string.punctuation)


def tokenize(text: str) -> list[str]:
    """TIRG/DWC tokenisation: drop non-ASCII, strip ASCII punctuation, lower-case, split on whitespace."""
    text = text.encode("ascii", "ignore").decode("ascii")
    return text.translate(_PUNCT).lower().split()


class Vocabulary(nn.Module):
    """Word → id built from the training texts (sorted, no rare-word threshold). Id 0 is UNK and padding.

    Kept inside the model's state_dict (``get_extra_state``), so a checkpoint carries its vocabulary.
    """

    def __init__(self, texts: list[str] | None = None):
        super().__init__()
        words = sorted({w for t in texts or [] for w in tokenize(t)})
        self.words: list[str] = ["<unk>", *words]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(
        self, texts: list[str], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [[self.index.get(w, 0) for w in tokenize(t)] or [0] for t in texts]
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        out = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(device) if device is not None else out, lengths

    def get_extra_state(self) -> dict:
        return {"words": list(self.words)}

    def set_extra_state(self, state: dict) -> None:
        self.words = list(state["words"])
        self.index = {w: i for i, w in enumerate(self.words)}


class LSTMTextEncoder(nn.Module):
    """Embedding → 1-layer LSTM (zero initial state) over the padded batch.

    ``forward`` returns (outputs N×L×H, lengths). ``last(...)`` picks the output at the last valid step (TIRG).
    """

    def __init__(self, vocab: Vocabulary, word_dim: int, hidden: int):
        super().__init__()
        self.vocab = vocab
        self.embedding = nn.Embedding(max(len(vocab), 1), word_dim)
        self.lstm = nn.LSTM(word_dim, hidden, batch_first=True)
        self.out_dim = hidden

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.embedding.weight.device
        ids, lengths = self.vocab.encode(texts, device)
        out, _ = self.lstm(self.embedding(ids))
        return out, lengths.to(device)

    @staticmethod
    def last(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, outputs.size(2))
        return outputs.gather(1, idx).squeeze(1)

    @staticmethod
    def masked_max(outputs: torch.Tensor, lengths: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Max over time after the padded positions (≥ length) are set to ``fill``. AMC fills with 0, so a caption
        shorter than the batch maximum gets max(valid outputs, 0) per channel."""
        valid = torch.arange(outputs.size(1), device=outputs.device).view(1, -1) < lengths.view(-1, 1)
        return outputs.masked_fill(~valid.unsqueeze(-1), fill).max(dim=1).values
