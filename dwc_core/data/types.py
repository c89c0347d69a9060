"""The shape every dataset takes once loaded (torch-free).

A dataset is a table of images (``images``: each with an id, a source and a display string), training
*triplets* (reference image, modification text, target image, target label) and one or more *evaluation sets*.
Images are referred to by their index in ``images``; the image pipeline (``data/loading.py``) turns indices into
pixels through a decoded-image cache, so loaders never touch pixels.

Hit rule, unified: an evaluation set has, per named rule, a key for every gallery position and a key for every
query; a retrieved gallery item is a hit when its key equals the query's key. ``exact`` uses image indices,
label-style rules (Fashion200k caption match, CSS3D label match, MIT-States adjective/noun) use label codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``id`` is the dataset's own name for it (asin, relative path, index), ``path`` the file to
    decode (``None`` when the dataset renders it), ``display`` what the browser shows (caption, description)."""

    id: str
    path: str | None
    display: str = ""


@dataclass(frozen=True)
class Triplet:
    ref: int
    text: str
    target: int
    label: int  # class of the target for duplicate-aware losses (SSG); image index when targets are unique


@dataclass(frozen=True)
class Query:
    ref: int  # image index of the reference
    text: str
    target: int  # image index of the (first) target, for display


@dataclass
class EvalSet:
    """Queries ranked against a gallery under one protocol."""

    name: str
    queries: list[Query]
    gallery: list[int]  # image indices, in ranking order of ties
    ks: list[int]
    mask_reference: bool = True
    # rule name -> (key per gallery position, key per query); "main" is the reported rule
    match: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    skipped_queries: int = 0
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.match:
            self.match = {"main": (list(self.gallery), [q.target for q in self.queries])}


@dataclass
class CIRDataset:
    """A loaded dataset. ``train_triplets(epoch, seed)`` gives that epoch's training triplets (fixed for most
    datasets, re-sampled deterministically per epoch for Fashion200k / CSS3D-style on-the-fly sampling)."""

    name: str
    images: list[ImageRecord]
    train: list[Triplet]
    eval_sets: dict[str, EvalSet]
    num_labels: int
    info: dict[str, Any] = field(default_factory=dict)
    sampler: Callable[[int, int], list[Triplet]] | None = None
    # optional in-memory pixel source: index -> HxWx3 uint8 numpy array (synthetic scenes, CSS3D 2D renders)
    render: Callable[[int], Any] | None = None
    cache_key: str = ""

    def train_triplets(self, epoch: int, seed: int) -> list[Triplet]:
        if self.sampler is not None:
            return self.sampler(epoch, seed)
        return self.train

    def train_texts(self) -> list[str]:
        return [t.text for t in self.train]

    def describe(self, index: int) -> str:
        rec = self.images[index]
        return rec.display or rec.id
