"""CSS3D (TIRG's "CLEVR with simple shapes" set) from ``css_toy_dataset_novel2_small.dup.npy``.

Files under ``root``: the npy (a pickled dict, loaded with ``allow_pickle=True, encoding="latin1"``) keyed by split
(``train`` / ``test``), each holding ``objects_img`` (per image, a list of objects ``{color, size, shape, pos=[y, x]}``),
``mods`` (``{from: [image ids], to: [image ids], to_str: text}``) and optionally ``labels`` (per image; images that
share a label show the same scene); images ``images/css_<split>_<idx:06d>.png``.

* Evaluation (TIRG): every (from, to) pair of every test mod is a query with text ``to_str``; gallery = every test
  image; a retrieved image is a hit when its label equals the target's label (``main`` rule).
* Training pairs are re-sampled each epoch (TIRG): a random mod and one of its pairs, then a second pair from the
  same source image under a different mod, so batches hold same-source negatives. Epoch length = number of
  training images. Deterministic from (seed, epoch); training label = label code of the target.
* ``render_2d: true`` draws TIRG's 64×64 "2D" version of each scene from ``objects_img`` instead of reading the
  PNGs (no image files needed).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from dwc_core.config.schema.datasets import DEFAULT_KS
from dwc_core.data.files import ImageTable, remember_last, require_root, split_report
from dwc_core.data.types import CIRDataset, EvalSet, Query, Triplet
from dwc_core.errors import DataError

TITLE = "CSS3D"
NPY = "css_toy_dataset_novel2_small.dup.npy"
LAYOUT = f"{NPY} and images/css_<split>_<idx:06d>.png"
COLORS = {  # TIRG's palette of the 2D renders
    "gray": (87, 87, 87),
    "red": (244, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 205, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
RENDER_SIZE = 64


def _str(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _get(mapping: Any, key: str) -> Any:
    if not isinstance(mapping, dict):
        return None
    if key in mapping:
        return mapping[key]
    return mapping.get(key.encode())


def read_npy(path: Path) -> dict:
    import numpy as np

    if not path.is_file():
        raise DataError(
            f"{TITLE}: missing annotation file {path}. Download CSS.zip and unpack it into dataset.root."
        )
    try:
        data = np.load(path, allow_pickle=True, encoding="latin1")
        data = data.item() if getattr(data, "shape", None) == () else data
    except Exception as exc:  # numpy/pickle raise many kinds for a damaged file
        raise DataError(
            f"{path}: {TITLE}: not a readable pickled npy file ({type(exc).__name__}: {exc})."
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: {TITLE}: expected a dict keyed by split (train, test), found {type(data).__name__}."
        )
    return data


class Split:
    """One split of the npy, validated: objects, labels and the (from, to, text) pairs of each mod."""

    def __init__(self, data: dict, name: str, path: Path):
        self.name = name
        where = f"{path}: {TITLE}: split '{name}'"
        raw = _get(data, name)
        if raw is None:
            raise DataError(f"{where} is missing (keys found: {', '.join(map(str, map(_str, data)))}).")
        objects = _get(raw, "objects_img")
        mods = _get(raw, "mods")
        if objects is None or mods is None:
            raise DataError(f"{where}: expected the keys objects_img and mods.")
        self.objects = list(objects)
        n = len(self.objects)
        labels = _get(raw, "labels")
        self.labels = [_str(x) for x in labels] if labels is not None else list(range(n))
        if len(self.labels) != n:
            raise DataError(f"{where}: {len(self.labels)} labels for {n} images in objects_img.")
        self.mods: list[tuple[str, list[tuple[int, int]]]] = []
        for k, mod in enumerate(mods):
            src, dst, text = _get(mod, "from"), _get(mod, "to"), _str(_get(mod, "to_str"))
            if src is None or dst is None or len(src) != len(dst):
                raise DataError(f"{where}: mod {k}: expected 'from' and 'to' lists of the same length.")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: mod {k}: empty or missing to_str (the modification text).")
            pairs = [(int(a), int(b)) for a, b in zip(src, dst, strict=True)]
            bad = [x for p in pairs for x in p if not 0 <= x < n]
            if bad:
                raise DataError(f"{where}: mod {k}: image id {bad[0]} is outside 0..{n - 1}.")
            self.mods.append((text.strip(), pairs))

    def key(self, i: int) -> str:
        return f"css_{self.name}_{i:06d}"


def describe(objects: Any) -> str:
    parts = []
    for obj in objects or []:
        size, color, shape = (_str(_get(obj, k)) for k in ("size", "color", "shape"))
        pos = _get(obj, "pos")
        at = f" at ({float(pos[0]):.2f}, {float(pos[1]):.2f})" if pos is not None and len(pos) == 2 else ""
        parts.append(f"{size} {color} {shape}{at}")
    return "; ".join(parts) or "empty scene"


def render_2d(objects: Any):
    """TIRG's 2D scene: white 64×64, each object a square (rectangle), rhombus (circle) or apex-up triangle of
    half-size 4 px (8 px when large) centred at ``pos`` (y, x in 0..1)."""
    import numpy as np

    img = np.full((RENDER_SIZE, RENDER_SIZE, 3), 255, dtype=np.uint8)
    for obj in objects or []:
        color, shape, size = (_str(_get(obj, k)) for k in ("color", "shape", "size"))
        if color not in COLORS:
            raise DataError(f"{TITLE}: cannot render colour {color!r} (known: {', '.join(COLORS)}).")
        s = 8.0 if size == "large" else 4.0
        y, x = (float(v) * RENDER_SIZE for v in _get(obj, "pos"))
        rows = range(int(y - s), int(y + s) + (1 if shape == "circle" else 0))
        for r in rows:
            if not 0 <= r < RENDER_SIZE:
                continue
            if shape == "rectangle":
                x0, x1 = x - s, x + s
            elif shape == "circle":
                half = s - abs(r - y)
                x0, x1 = x - half, x + half
            elif shape == "triangle":
                half = (r - y + s) / 2
                x0, x1 = x - half, x + half
            else:
                raise DataError(
                    f"{TITLE}: cannot render shape {shape!r} (known: rectangle, circle, triangle)."
                )
            lo, hi = max(0, int(x0)), min(RENDER_SIZE, int(x1))
            if hi > lo:
                img[r, lo:hi] = COLORS[color]
    return img


def load(cfg: dict, cache_dir: Path) -> CIRDataset:
    root = require_root(cfg, TITLE, LAYOUT)
    npy = root / NPY
    data = read_npy(npy)
    splits = {name: Split(data, name, npy) for name in ("train", "test")}
    render = bool(cfg["render_2d"])
    table = ImageTable(
        TITLE, f"Unpack the PNGs of CSS.zip into {root / 'images'} (or set dataset.render_2d: true)."
    )
    for sp in splits.values():
        for i, objs in enumerate(sp.objects):
            path = None if render else str(root / "images" / f"{sp.key(i)}.png")
            table.want(sp.key(i), path, describe(objs))
    table.check(cfg["missing_images"])

    def idx(sp: Split, i: int) -> int | None:
        return table.index(sp.key(i))

    train_sp, test_sp = splits["train"], splits["test"]
    codes = {lab: k for k, lab in enumerate(dict.fromkeys(train_sp.labels))}
    mods: list[tuple[str, list[tuple[int, int]]]] = []
    skipped_pairs = 0
    for text, pairs in train_sp.mods:
        kept = [(a, b) for a, b in pairs if idx(train_sp, a) is not None and idx(train_sp, b) is not None]
        skipped_pairs += len(pairs) - len(kept)
        if kept:
            mods.append((text, kept))
    by_source: dict[int, list[tuple[int, int]]] = {}
    for m, (_, pairs) in enumerate(mods):
        for a, b in pairs:
            by_source.setdefault(a, []).append((m, b))
    epoch_len = sum(1 for i in range(len(train_sp.objects)) if idx(train_sp, i) is not None)

    def triplet(m: int, a: int, b: int) -> Triplet:
        return Triplet(idx(train_sp, a), mods[m][0], idx(train_sp, b), codes[train_sp.labels[b]])

    @remember_last
    def sampler(epoch: int, seed: int) -> list[Triplet]:
        rng = random.Random(f"css3d:{seed}:{epoch}")
        out: list[Triplet] = []
        while mods and len(out) < epoch_len:
            m = rng.randrange(len(mods))
            a, b = rng.choice(mods[m][1])
            out.append(triplet(m, a, b))
            others = [(m2, b2) for m2, b2 in by_source[a] if m2 != m]
            if others and len(out) < epoch_len:
                m2, b2 = rng.choice(others)
                out.append(triplet(m2, a, b2))
        return out

    test = _eval_set(test_sp, table)
    missing = len(table.missing)
    info = {
        "root": str(root),
        "render_2d": render,
        "train_images": epoch_len,
        "train_mods": len(mods),
        "train_samples": epoch_len,
        "test_queries": len(test.queries),
        "gallery_size": len(test.gallery),
        "missing_images": missing,
        "missing_examples": table.missing_paths(),
        "skipped_queries": test.skipped_queries,
        "skipped_triplets": skipped_pairs,
        "splits": {"test": split_report(epoch_len, missing, skipped_pairs)},
    }
    renderer, key = None, ""
    if render:
        objects = {sp.key(i): objs for sp in splits.values() for i, objs in enumerate(sp.objects)}
        scenes = [objects[rec.id] for rec in table.records]
        stat = npy.stat()
        blob = f"{npy.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{len(scenes)}"
        key = "css3d-2d-" + hashlib.sha1(blob.encode()).hexdigest()[:12]

        def renderer(i: int):
            return render_2d(scenes[i])

    return CIRDataset(
        name="css3d",
        images=table.records,
        train=sampler(0, 0),
        eval_sets={"test": test},
        num_labels=len(codes),
        info=info,
        sampler=sampler,
        render=renderer,
        cache_key=key,
    )


def _eval_set(sp: Split, table: ImageTable) -> EvalSet:
    present = [(i, table.index(sp.key(i))) for i in range(len(sp.objects))]
    present = [(i, g) for i, g in present if g is not None]
    codes = {lab: k for k, lab in enumerate(dict.fromkeys(sp.labels))}
    gallery = [g for _, g in present]
    gallery_keys = [codes[sp.labels[i]] for i, _ in present]
    queries, keys, skipped = [], [], 0
    for text, pairs in sp.mods:
        for a, b in pairs:
            ra, rb = table.index(sp.key(a)), table.index(sp.key(b))
            if ra is None or rb is None:
                skipped += 1
                continue
            queries.append(Query(ref=ra, text=text, target=rb))
            keys.append(codes[sp.labels[b]])
    notes = f"gallery = all {len(gallery)} test images; hit = same label as the target"
    if skipped:
        notes += f"; {skipped} queries skipped: missing images"
    return EvalSet(
        name="test",
        queries=queries,
        gallery=gallery,
        ks=list(DEFAULT_KS["css3d"]),
        mask_reference=True,
        match={"main": (gallery_keys, keys)},
        skipped_queries=skipped,
        notes=notes,
    )
