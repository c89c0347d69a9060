"""MIT-States (Isola et al. 2015) with TIRG's split and queries.

Files under ``root``: ``images/<adj noun>/*.jpg``. Folders whose name is not two words, or whose adjective is the
literal ``adj`` (unlabelled images), are left out, as in TIRG. Images of the 49 test nouns below (TIRG's
hard-coded list) form the test split, the other nouns the training split.

* Text = the target adjective only.
* Training pairs are re-sampled each epoch (TIRG): a source image (sources in a shuffled order) and two targets of the same noun with different
  adjectives (each target: a random adjective of that noun, then a random image of that "adj noun"), emitted as
  two consecutive triplets; epoch length = number of training images. Deterministic from (seed, epoch); training
  label = code of the target's "adj noun" caption.
* Evaluation: for every test image and every *other* adjective seen with its noun, one query (text = that
  adjective). Gallery = every test image, the reference masked. Three hit rules, all reported: ``main`` = same
  "adj noun" as the target (exact), ``adj`` = same adjective, ``noun`` = same noun.
"""

from __future__ import annotations

import random
from pathlib import Path

from dwc_core.config.schema.datasets import DEFAULT_KS
from dwc_core.data.files import remember_last, require_root, split_report
from dwc_core.data.types import CIRDataset, EvalSet, ImageRecord, Query, Triplet
from dwc_core.errors import DataError

TITLE = "MIT-States"
LAYOUT = "images/<adj noun>/*.jpg"
TEST_NOUNS = frozenset(  # TIRG's 49 test nouns
    (
        "armor", "bracelet", "bush", "camera", "candy", "castle", "ceramic", "cheese", "clock", "clothes",
        "coffee", "fan", "fig", "fish", "foam", "forest", "fruit", "furniture", "garden", "gate", "glass",
        "horse", "island", "laptop", "lead", "lightning", "mirror", "orange", "paint", "persimmon", "plastic",
        "plate", "potato", "road", "rubber", "sand", "shell", "sky", "smoke", "steel", "stream", "table", "tea",
        "tomato", "vacuum", "wax", "wheel", "window", "wool",
    )
)  # fmt: skip
IMAGE_SUFFIXES = (".jpg", ".jpeg")


def scan(root: Path) -> tuple[list[tuple[str, str, str]], dict]:
    """(adj, noun, path) of every usable image, folders and files in sorted order; and what was left out."""
    folder = root / "images"
    if not folder.is_dir():
        raise DataError(
            f"{TITLE}: the image folder {folder} does not exist. dataset.root must hold {LAYOUT}."
        )
    out, skipped = [], {"unlabelled_folders": 0, "other_folders": 0, "other_files": 0}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        words = sub.name.split()
        if len(words) != 2:
            skipped["other_folders"] += 1
            continue
        adj, noun = words
        if adj == "adj":
            skipped["unlabelled_folders"] += 1
            continue
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                out.append((adj, noun, str(f)))
            else:
                skipped["other_files"] += 1
    if not out:
        raise DataError(
            f"{TITLE}: no images found under {folder}/<adj noun>/*.jpg. dataset.root must hold {LAYOUT}."
        )
    return out, skipped


class Index:
    """Adjectives per noun and images per caption, over one split's image positions."""

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items
        self.adjs: dict[str, list[str]] = {}
        self.images_of: dict[str, list[int]] = {}
        for pos, (adj, noun) in enumerate(items):
            self.images_of.setdefault(f"{adj} {noun}", []).append(pos)
            adjs = self.adjs.setdefault(noun, [])
            if adj not in adjs:
                adjs.append(adj)

    def target(self, rng: random.Random, noun: str) -> int:
        adj = rng.choice(self.adjs[noun])
        return rng.choice(self.images_of[f"{adj} {noun}"])


def load(cfg: dict, cache_dir: Path) -> CIRDataset:
    root = require_root(cfg, TITLE, LAYOUT)
    found, left_out = scan(root)
    train_items = [x for x in found if x[1] not in TEST_NOUNS]
    test_items = [x for x in found if x[1] in TEST_NOUNS]
    images = [
        ImageRecord(id=str(Path(p).relative_to(root)), path=p, display=f"{adj} {noun}")
        for adj, noun, p in train_items + test_items
    ]
    n_train = len(train_items)
    train_index = Index([(a, n) for a, n, _ in train_items])
    codes = {c: k for k, c in enumerate(sorted(train_index.images_of))}
    sources = [pos for pos, (_, noun) in enumerate(train_index.items) if len(train_index.adjs[noun]) >= 2]

    @remember_last
    def sampler(epoch: int, seed: int) -> list[Triplet]:
        rng = random.Random(f"mitstates:{seed}:{epoch}")
        order = list(sources)
        rng.shuffle(order)
        out: list[Triplet] = []
        while order and len(out) < n_train:
            src = order[(len(out) // 2) % len(order)]
            noun = train_index.items[src][1]
            while True:
                t1, t2 = train_index.target(rng, noun), train_index.target(rng, noun)
                if train_index.items[t1][0] != train_index.items[t2][0]:
                    break
            for t in (t1, t2)[: n_train - len(out)]:
                adj = train_index.items[t][0]
                out.append(Triplet(ref=src, text=adj, target=t, label=codes[f"{adj} {noun}"]))
        return out

    test = _eval_set([(a, n) for a, n, _ in test_items], n_train)
    info = {
        "root": str(root),
        "train_images": n_train,
        "train_nouns": len(train_index.adjs),
        "test_nouns": len({n for _, n, _ in test_items}),
        "train_samples": n_train,
        "test_queries": len(test.queries),
        "gallery_size": len(test.gallery),
        "missing_images": 0,
        "skipped_queries": 0,
        **left_out,
        "splits": {"test": split_report(n_train, 0)},
    }
    return CIRDataset(
        name="mitstates",
        images=images,
        train=sampler(0, 0),
        eval_sets={"test": test},
        num_labels=len(codes),
        info=info,
        sampler=sampler,
    )


def _eval_set(items: list[tuple[str, str]], offset: int) -> EvalSet:
    index = Index(items)
    caption_code = {c: k for k, c in enumerate(sorted(index.images_of))}
    adj_code = {a: k for k, a in enumerate(sorted({a for a, _ in items}))}
    noun_code = {n: k for k, n in enumerate(sorted(index.adjs))}
    queries: list[Query] = []
    keys: dict[str, list[int]] = {"main": [], "adj": [], "noun": []}
    for pos, (adj, noun) in enumerate(items):
        for other in index.adjs[noun]:
            if other == adj:
                continue
            caption = f"{other} {noun}"
            queries.append(Query(ref=offset + pos, text=other, target=offset + index.images_of[caption][0]))
            keys["main"].append(caption_code[caption])
            keys["adj"].append(adj_code[other])
            keys["noun"].append(noun_code[noun])
    gallery = [offset + pos for pos in range(len(items))]
    match = {
        "main": ([caption_code[f"{a} {n}"] for a, n in items], keys["main"]),
        "adj": ([adj_code[a] for a, _ in items], keys["adj"]),
        "noun": ([noun_code[n] for _, n in items], keys["noun"]),
    }
    return EvalSet(
        name="test",
        queries=queries,
        gallery=gallery,
        ks=list(DEFAULT_KS["mitstates"]),
        mask_reference=True,
        match=match,
        notes=f"gallery = all {len(gallery)} test images; main = same adj+noun, adj = same adjective, noun = same noun",
    )
