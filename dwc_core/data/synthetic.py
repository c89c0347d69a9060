"""The built-in "shapes" benchmark: CSS3D-like scenes drawn with Pillow, no download needed.

A scene is a few objects (shape × colour × size) on a grid of positions. A query is a scene plus a modification
sentence (add / remove / change colour / change size / move); the target is the modified scene. Every image has an
exact text description, so a hit is exact (the gallery holds each distinct scene once) and results can be browsed
as text. Deterministic from ``data_seed``; the metadata is generated once into a cache folder keyed by its
parameters, and pixels are rendered on demand into the shared decoded-image cache (``data/loading.py``).

``novel_split: true`` holds out a set of (shape, colour) combinations from training: every test target contains at
least one of them, so the test measures composition of attributes never seen together.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from dwc_core.config.schema.datasets import DEFAULT_KS
from dwc_core.data.types import CIRDataset, EvalSet, ImageRecord, Query, Triplet
from dwc_core.fileio import atomic_write_text

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 190),
    "cyan": (40, 200, 210),
}
SIZES = ("small", "large")
POSITION_NAMES_3 = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
GENERATOR_VERSION = 1

Obj = tuple[str, str, str, int]  # shape, colour, size, position index
Scene = tuple[Obj, ...]  # sorted by position


def position_name(pos: int, grid: int) -> str:
    if grid == 3:
        return POSITION_NAMES_3[pos]
    return f"row {pos // grid + 1} column {pos % grid + 1}"


def describe(scene: Scene, grid: int) -> str:
    if not scene:
        return "an empty scene"
    return ", ".join(
        f"{size} {color} {shape} at {position_name(pos, grid)}" for shape, color, size, pos in scene
    )


def _canon(objs) -> Scene:
    return tuple(sorted(objs, key=lambda o: o[3]))


@dataclass(frozen=True)
class Params:
    num_train: int
    num_test: int
    max_objects: int
    grid: int
    data_seed: int
    novel_split: bool

    @classmethod
    def from_config(cls, cfg: dict) -> Params:
        return cls(
            int(cfg["num_train"]), int(cfg["num_test"]), int(cfg["max_objects"]), int(cfg["grid"]),
            int(cfg["data_seed"]), bool(cfg["novel_split"]),
        )  # fmt: skip

    def key(self) -> str:
        blob = json.dumps({**self.__dict__, "v": GENERATOR_VERSION}, sort_keys=True)
        return "synthetic-" + hashlib.sha1(blob.encode()).hexdigest()[:12]


class _Generator:
    def __init__(self, params: Params):
        self.p = params
        self.rng = random.Random(params.data_seed)
        combos = [(s, c) for s in SHAPES for c in COLORS]
        held = random.Random(params.data_seed + 7).sample(combos, k=max(1, len(combos) // 5))
        self.held_out = set(held) if params.novel_split else set()

    def _random_obj(self, free: list[int], allow_held: bool) -> Obj:
        while True:
            shape, color = self.rng.choice(SHAPES), self.rng.choice(list(COLORS))
            if allow_held or (shape, color) not in self.held_out:
                return (shape, color, self.rng.choice(SIZES), self.rng.choice(free))

    def random_scene(self, allow_held: bool) -> Scene:
        cells = self.p.grid * self.p.grid
        n = self.rng.randint(1, min(self.p.max_objects, cells - 1))
        positions = self.rng.sample(range(cells), n)
        objs = []
        for pos in positions:
            o = self._random_obj([pos], allow_held)
            objs.append(o)
        return _canon(objs)

    def _name(self, scene: Scene, obj: Obj) -> str:
        """Shortest unambiguous reference to an object of the scene."""
        shape, color, size, pos = obj
        for phrase, same in (
            (f"the {color} {shape}", lambda o: o[0] == shape and o[1] == color),
            (f"the {size} {color} {shape}", lambda o: o[0] == shape and o[1] == color and o[2] == size),
        ):
            if sum(1 for o in scene if same(o)) == 1:
                return phrase
        return f"the {color} {shape} at {position_name(pos, self.p.grid)}"

    def modify(self, scene: Scene, allow_held: bool) -> tuple[str, Scene] | None:
        cells = self.p.grid * self.p.grid
        free = [c for c in range(cells) if all(o[3] != c for o in scene)]
        kinds = []
        if free and len(scene) < self.p.max_objects:
            kinds.append("add")
        if len(scene) > 1:
            kinds.append("remove")
        kinds += ["color", "size"]
        if free:
            kinds.append("move")
        kind = self.rng.choice(kinds)
        objs = list(scene)
        grid = self.p.grid
        if kind == "add":
            new = self._random_obj(free, allow_held)
            text = self.rng.choice(("add a {d} at {p}", "put a {d} at {p}", "place a {d} at {p}")).format(
                d=f"{new[2]} {new[1]} {new[0]}", p=position_name(new[3], grid)
            )
            objs.append(new)
        else:
            i = self.rng.randrange(len(objs))
            obj = objs[i]
            name = self._name(scene, obj)
            if kind == "remove":
                text = self.rng.choice(("remove {n}", "take away {n}", "delete {n}")).format(n=name)
                del objs[i]
            elif kind == "color":
                color = self.rng.choice([c for c in COLORS if c != obj[1]])
                if not allow_held and (obj[0], color) in self.held_out:
                    return None
                text = self.rng.choice(("make {n} {c}", "change {n} to {c}", "paint {n} {c}")).format(
                    n=name, c=color
                )
                objs[i] = (obj[0], color, obj[2], obj[3])
            elif kind == "size":
                size = "large" if obj[2] == "small" else "small"
                text = self.rng.choice(("make {n} {s}", "change {n} to {s}", "resize {n} to {s}")).format(
                    n=name, s=size
                )
                objs[i] = (obj[0], obj[1], size, obj[3])
            else:
                pos = self.rng.choice(free)
                text = self.rng.choice(("move {n} to {p}", "shift {n} to {p}")).format(
                    n=name, p=position_name(pos, grid)
                )
                objs[i] = (obj[0], obj[1], obj[2], pos)
        return text, _canon(objs)

    def has_held(self, scene: Scene) -> bool:
        return any((o[0], o[1]) in self.held_out for o in scene)

    def queries(self, n: int, test: bool) -> list[tuple[Scene, str, Scene]]:
        out = []
        while len(out) < n:
            allow = test and self.p.novel_split
            ref = self.random_scene(allow_held=allow)
            mod = self.modify(ref, allow_held=allow)
            if mod is None:
                continue
            text, target = mod
            if target == ref:
                continue
            if self.p.novel_split:
                if test and not self.has_held(target):
                    continue
                if not test and (self.has_held(ref) or self.has_held(target)):
                    continue
            out.append((ref, text, target))
        return out


def generate(params: Params) -> dict:
    """Generate the benchmark's metadata (scenes and queries); pure python, deterministic."""
    gen = _Generator(params)
    train = gen.queries(params.num_train, test=False)
    test = gen.queries(params.num_test, test=True)
    scenes: dict[Scene, int] = {}

    def index(scene: Scene) -> int:
        if scene not in scenes:
            scenes[scene] = len(scenes)
        return scenes[scene]

    train_rows = [(index(r), t, index(g)) for r, t, g in train]
    n_train_images = len(scenes)
    test_rows = [(index(r), t, index(g)) for r, t, g in test]
    gallery = sorted({i for r, _, g in test_rows for i in (r, g)})
    return {
        "params": params.__dict__,
        "version": GENERATOR_VERSION,
        "scenes": [list(map(list, s)) for s in scenes],
        "train": train_rows,
        "test": test_rows,
        "gallery": gallery,
        "num_train_images": n_train_images,
        "held_out": sorted(map(list, gen.held_out)),
    }


def render_scene(scene, grid: int, size: int):
    """Draw a scene as an HxWx3 uint8 array (supersampled for smooth edges)."""
    import numpy as np
    from PIL import Image, ImageDraw

    scale = 2
    side = size * scale
    img = Image.new("RGB", (side, side), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    cell = side / grid
    for shape, color, obj_size, pos in scene:
        r, c = divmod(int(pos), grid)
        cx, cy = (c + 0.5) * cell, (r + 0.5) * cell
        half = cell * (0.42 if obj_size == "large" else 0.22)
        fill = COLORS[color]
        box = (cx - half, cy - half, cx + half, cy + half)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
        else:
            draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def metadata(params: Params, cache_dir: Path) -> dict:
    """Load the generated metadata from the cache, generating it the first time (atomic write)."""
    folder = Path(cache_dir) / params.key()
    path = folder / "meta.json"
    if path.is_file():
        return json.loads(path.read_text())
    meta = generate(params)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(meta))
    return meta


def load(cfg: dict, cache_dir: Path) -> CIRDataset:
    params = Params.from_config(cfg)
    meta = metadata(params, cache_dir)
    grid = params.grid
    scenes = [tuple(tuple(o) for o in s) for s in meta["scenes"]]
    images = [ImageRecord(id=f"scene{i}", path=None, display=describe(s, grid)) for i, s in enumerate(scenes)]
    train = [Triplet(ref=r, text=t, target=g, label=g) for r, t, g in meta["train"]]
    queries = [Query(ref=r, text=t, target=g) for r, t, g in meta["test"]]
    ks = list(DEFAULT_KS["synthetic"])
    test = EvalSet(name="test", queries=queries, gallery=list(meta["gallery"]), ks=ks, mask_reference=True)
    size = int(cfg["image_size"])

    def render(index: int):
        return render_scene(scenes[index], grid, size)

    info = {
        "train_samples": len(train),
        "train_images": meta["num_train_images"],
        "test_queries": len(queries),
        "gallery_size": len(test.gallery),
        "missing_images": 0,
        "skipped_queries": 0,
        "held_out_combinations": [" ".join(reversed(x)) for x in meta["held_out"]],
    }
    return CIRDataset(
        name="synthetic",
        images=images,
        train=train,
        eval_sets={"test": test},
        num_labels=len(images),
        info=info,
        render=render,
        cache_key=params.key(),
    )
