"""The one interface the trainer and evaluator use for every method. The trainer never branches on a method's name.

A method is an ``nn.Module`` subclass of :class:`Method`, registered under its name with :func:`register`. It gets
its validated ``model:`` options and a :class:`BuildContext` (training texts for vocabularies, number of labels,
image size). Images arrive as uint8 tensors (N, 3, H, W) on the device; each method normalises them itself
(:meth:`Method.prepare_images`), so the data pipeline is shared by every method.

A training step is the method's business (DWC's alternating two-optimizer schedule lives in DWC's ``train_step``);
the :class:`StepContext` handed to it owns autocast, gradient scaling, clipping and the non-finite-loss check, so
every method gets mixed precision and the trainer's safety checks without repeating them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dwc_core.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BuildContext:
    train_texts: list[str]
    num_labels: int
    image_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # effective autocast precision of the run (bf16 | fp16 | fp32)


@dataclass
class Batch:
    ref: torch.Tensor  # uint8 (N, 3, H, W), on the device
    target: torch.Tensor  # uint8 (N, 3, H, W)
    texts: list[str]
    labels: torch.Tensor  # int64 (N,)


class StepContext:
    """What a method's ``train_step`` uses to run forward passes and optimizer steps.

    ``autocast()`` enters the run's precision; ``optimize(name, loss)`` does zero_grad → (scaled) backward →
    unscale → clip → step → scaler update for optimizer ``name``. A non-finite loss raises
    :class:`NonFiniteLoss` before anything is stepped.
    """

    def __init__(
        self,
        optimizers: dict[str, torch.optim.Optimizer],
        autocast: Callable[[], AbstractContextManager],
        scalers: dict[str, Any] | None = None,
        grad_clip: float = 0.0,
        step: int = 0,
        epoch: int = 0,
        sync_gradients: Callable[[list[nn.Parameter]], None] | None = None,
        any_rank: Callable[[bool], bool] | None = None,
    ):
        self.optimizers = optimizers
        self._autocast = autocast
        self.scalers = scalers or {}
        self.grad_clip = grad_clip
        self.step = step
        self.epoch = epoch
        # data parallel: average gradients across ranks after backward; agree on a non-finite loss on any rank
        self.sync_gradients = sync_gradients
        self.any_rank = any_rank or (lambda flag: flag)
        self.after_step: list[Callable[[str], None]] = []

    def autocast(self) -> AbstractContextManager:
        return self._autocast()

    def optimize(self, name: str, loss: torch.Tensor, params: list[nn.Parameter] | None = None) -> None:
        if self.any_rank(not bool(torch.isfinite(loss.detach()).all())):
            raise NonFiniteLoss(name, float(loss.detach().float().item()))
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        scaler = self.scalers.get(name)
        group_params = params or [p for g in opt.param_groups for p in g["params"]]
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.sync_gradients is not None:
            self.sync_gradients(group_params)
        if scaler is not None:
            scaler.unscale_(opt)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(group_params, self.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        for hook in self.after_step:
            hook(name)


class NonFiniteLoss(RuntimeError):
    def __init__(self, optimizer: str, value: float):
        super().__init__(f"non-finite loss ({value}) for optimizer '{optimizer}'")
        self.optimizer = optimizer
        self.value = value


class Method(nn.Module):
    """Base class of every method. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str] = ""
    #: mean/std the method's image encoders expect
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, opts: dict, ctx: BuildContext):
        super().__init__()
        self.opts = opts
        self.ctx = ctx

    # -------------------------------------------------------------------------------------------- images
    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,H,W) → normalised float (N,3,H,W) on the same device."""
        x = images.float().div_(255.0)
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    # ---------------------------------------------------------------------------------------- training
    def param_groups(self, trainer: dict) -> dict[str, list[dict]]:
        """Optimizer name → torch param groups. Default: one group of every trainable parameter."""
        return {"main": [{"params": [p for p in self.parameters() if p.requires_grad]}]}

    def make_optimizers(self, trainer: dict) -> dict[str, torch.optim.Optimizer]:
        """Default: Adam (coupled L2 weight decay) per group set, as DWC and AMC do."""
        impl = self.optimizer_impl(trainer)
        return {
            name: torch.optim.Adam(groups, lr=trainer["lr"], weight_decay=trainer["weight_decay"], **impl)
            for name, groups in self.param_groups(trainer).items()
        }

    def optimizer_impl(self, trainer: dict, fusable: bool = True) -> dict[str, bool]:
        """The keyword arguments choosing PyTorch's optimizer implementation (``trainer.optimizer_impl``): auto =
        fused kernels where the parameters are on a GPU (one launch per step instead of a few per parameter list:
        the host, not the GPU, limits a full-size DWC step at batch 32), PyTorch's own choice elsewhere. Same
        update rule every way, different float rounding. ``fusable=False`` (SGD) maps fused to PyTorch's choice.
        Configs recorded before the option existed (no key) keep PyTorch's choice."""
        impl = trainer.get("optimizer_impl")
        if impl == "auto":
            on_gpu = any(p.is_cuda for p in self.parameters())
            impl = "fused" if on_gpu else None
        if impl == "fused":
            return {"fused": True} if fusable else {}
        if impl in ("foreach", "loop"):
            return {"foreach": impl == "foreach"}
        return {}

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """One optimisation step (possibly several optimizer steps). Returns detached loss terms."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------- embeddings
    def encode_queries(self, ref: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """uint8 reference images + texts → (N, D) query embeddings (L2-normalised, or the method's scoring)."""
        raise NotImplementedError

    def encode_gallery(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 gallery images → (N, D) embeddings scored against queries by dot product."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------- info
    def frozen_modules(self) -> Iterator[nn.Module]:
        """Modules that stay in eval mode and out of the optimizer (e.g. DWC's frozen CLIP)."""
        return iter(())

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def _frozen_prefixes(self) -> list[str]:
        frozen = {id(m) for m in self.frozen_modules()}
        return [f"{name}." for name, m in self.named_modules() if name and id(m) in frozen]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The state_dict without frozen modules (pretrained weights that are reloaded from their source)."""
        prefixes = tuple(self._frozen_prefixes())
        return {k: v for k, v in self.state_dict().items() if not (prefixes and k.startswith(prefixes))}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`checkpoint_state`; anything missing other than frozen modules is an error."""
        result = self.load_state_dict(state, strict=False)
        prefixes = tuple(self._frozen_prefixes())
        missing = [k for k in result.missing_keys if not (prefixes and k.startswith(prefixes))]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint does not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per top-level child (plus 'total' and 'frozen')."""
        out: dict[str, int] = {}
        for name, child in self.named_children():
            n = sum(p.numel() for p in child.parameters() if p.requires_grad)
            if n:
                out[name] = n
        out["total"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        out["frozen"] = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return out

    def switches(self) -> dict[str, Any]:
        return dict(self.opts)


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def build_method(opts: dict, ctx: BuildContext) -> Method:
    from dwc_core import models  # noqa: F401  (imports every method module so they register)

    name = opts["name"]
    if name not in METHODS:
        raise ConfigError(
            f"model.name = {name!r} is not a known method. Allowed: {' | '.join(sorted(METHODS))}."
        )
    return METHODS[name](opts, ctx)
