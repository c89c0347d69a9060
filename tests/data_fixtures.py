"""Tiny datasets in each official on-disk format, written into a test's tmp_path.

Each writer lays out the files exactly as the real download does, with small PIL-drawn images, and returns the
root. The annotation contents are fixed here so that tests can state the expected triplets, texts, labels and
galleries by hand.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from dwc_core.config.experiments import default_config


def draw_image(path: Path, name: str, size: tuple[int, int] = (20, 14)) -> Path:
    """A small distinct picture (colour and shape derived from ``name``), in the format of the file extension."""
    from PIL import Image, ImageDraw

    h = zlib.crc32(name.encode())
    bg = (h & 0xFF, (h >> 8) & 0xFF, (h >> 16) & 0xFF)
    fg = (255 - bg[0], 255 - bg[1], 255 - bg[2])
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    w, hh = size
    if h % 2:
        draw.ellipse((w // 4, hh // 4, 3 * w // 4, 3 * hh // 4), fill=fg)
    else:
        draw.rectangle((w // 5, hh // 3, 4 * w // 5, 2 * hh // 3), fill=fg)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def config(name: str, root: Path | None, **options) -> dict:
    """A complete ``dataset:`` section: schema defaults + root + options (presets re-applied)."""
    from dwc_core.config.schema.datasets import finalize_dataset

    cfg = default_config(dataset=name)["dataset"]
    if name == "fashioniq":
        for key in ("gallery", "mask_reference", "text"):
            cfg[key] = None
    cfg.update(root=str(root) if root is not None else None, **options)
    finalize_dataset(cfg)
    return cfg


def _write_json(path: Path, data, indent: int | None = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent))


# ------------------------------------------------------------------------------------------------- FashionIQ
def fiq_annotations(prefix: str) -> dict:
    """Captions and splits of one category; asins are ``<prefix>NN``."""
    p = prefix
    return {
        "train": [
            {"candidate": f"{p}01", "target": f"{p}02", "captions": ["is red", "has sleeves."]},
            {"candidate": f"{p}03", "target": f"{p}01", "captions": ["is longer", "is blue"]},
            {"candidate": f"{p}02", "target": f"{p}04", "captions": ["darker", "shorter"]},
        ],
        "val": [
            {"candidate": f"{p}10", "target": f"{p}11", "captions": ["is green", "no collar"]},
            {"candidate": f"{p}12", "target": f"{p}10", "captions": [" is Striped.", "has a bow"]},
            {"candidate": f"{p}11", "target": f"{p}13", "captions": ["more fitted", "is shorter?"]},
        ],
        "train_split": [f"{p}05", f"{p}04", f"{p}01", f"{p}02", f"{p}03"],
        "val_split": [f"{p}14", f"{p}10", f"{p}11", f"{p}12", f"{p}13", f"{p}15"],
    }


FIQ_PREFIX = {"dress": "d", "shirt": "s", "toptee": "t"}


def write_fashioniq(
    root: Path,
    categories=("dress", "shirt", "toptee"),
    image_dir: str = "all_imgs",
    ext: str = "png",
    skip_images=(),
) -> Path:
    for cat in categories:
        ann = fiq_annotations(FIQ_PREFIX[cat])
        for split in ("train", "val"):
            _write_json(root / "captions" / f"cap.{cat}.{split}.json", ann[split])
            _write_json(root / "image_splits" / f"split.{cat}.{split}.json", ann[f"{split}_split"])
        asins = {a for e in ann["train"] + ann["val"] for a in (e["candidate"], e["target"])}
        asins |= set(ann["train_split"]) | set(ann["val_split"])
        for asin in sorted(asins):
            if asin not in skip_images:
                draw_image(root / image_dir / f"{asin}.{ext}", asin)
    return root


# ------------------------------------------------------------------------------------------------------ Shoes
SHOES_RECORDS = [
    {"ImageName": "img_womens_clogs_2.jpg", "ReferenceImageName": "img_womens_clogs_1.jpg", "RelativeCaption": "is darker "},
    {"ImageName": "img_womens_clogs_3.jpg", "ReferenceImageName": "img_womens_clogs_2.jpg", "RelativeCaption": "has laces"},
    {"ImageName": "img_womens_boots_12.jpg", "ReferenceImageName": "img_womens_boots_11.jpg", "RelativeCaption": "is taller"},
    {"ImageName": "img_womens_boots_13.jpg", "ReferenceImageName": "img_womens_pumps_99.jpg", "RelativeCaption": "has a heel"},
    {"ImageName": "img_womens_boots_14.jpg", "ReferenceImageName": "img_womens_boots_13.jpg", "RelativeCaption": "is red"},
    {"ImageName": "img_womens_pumps_99.jpg", "ReferenceImageName": "img_womens_clogs_3.jpg", "RelativeCaption": "is shiny"},
]  # fmt: skip
SHOES_TRAIN = ["img_womens_clogs_1.jpg", "img_womens_clogs_2.jpg", "img_womens_clogs_3.jpg"]
SHOES_EVAL = [
    "img_womens_boots_11.jpg",
    "img_womens_boots_12.jpg",
    "img_womens_boots_13.jpg",
    "img_womens_boots_14.jpg",
]


def shoes_folder(name: str) -> str:
    kind = name.split("_")[2]
    return f"womens_{kind}/{len(kind) % 3}"


def write_shoes(root: Path, skip_images=(), under: str = "") -> Path:
    base = root / under if under else root
    _write_json(root / "relative_captions_shoes.json", SHOES_RECORDS)
    (root / "train_im_names.txt").write_text("\n".join(SHOES_TRAIN) + "\n")
    (root / "eval_im_names.txt").write_text("\n".join(SHOES_EVAL) + "\n\n")
    names = set(SHOES_TRAIN) | set(SHOES_EVAL) | {"img_womens_pumps_99.jpg", "img_womens_flats_5.jpg"}
    for name in sorted(names - set(skip_images)):
        draw_image(base / shoes_folder(name) / name, name)
    return root


# -------------------------------------------------------------------------------------------------- Fashion200k
F200K_TRAIN = {
    "dress": [
        ("women/dresses/casual/1/1_0.jpeg", "0.91", "red floral dress"),
        ("women/dresses/casual/2/2_0.jpeg", "0.82", "Blue floral dress"),
        ("women/dresses/casual/3/3_0.jpeg", "0.73", "red floral dress "),
        ("women/dresses/casual/4/4_0.jpeg", "0.70", "green maxi skirt."),
    ],
    "skirt": [
        ("women/skirts/mini/5/5_0.jpeg", "0.66", "black mini skirt"),
        ("women/skirts/mini/6/6_0.jpeg", "0.61", "black midi skirt"),
    ],
}
F200K_TEST = {
    "dress": [
        ("women/dresses/casual/10/10_0.jpeg", "0.9", "white lace dress"),
        ("women/dresses/casual/11/11_0.jpeg", "0.9", "black lace dress"),
        ("women/dresses/casual/12/12_0.jpeg", "0.9", "black lace dress"),
        ("women/dresses/casual/13/13_0.jpeg", "0.9", "white silk dress"),
    ],
}
F200K_QUERIES = [
    ("women/dresses/casual/10/10_0.jpeg", "women/dresses/casual/11/11_0.jpeg"),
    ("women/dresses/casual/13/13_0.jpeg", "women/dresses/casual/10/10_0.jpeg"),
]


def write_fashion200k(root: Path, skip_images=(), extra_queries=()) -> Path:
    for split, table in (("train", F200K_TRAIN), ("test", F200K_TEST)):
        for cat, rows in table.items():
            path = root / "labels" / f"{cat}_{split}_detect_all.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{p}\t{s}\t{c}\n" for p, s, c in rows))
            for p, _, _ in rows:
                if p not in skip_images:
                    draw_image(root / p, p, size=(14, 20))
    lines = [f"{a} {b}" for a, b in [*F200K_QUERIES, *extra_queries]]
    (root / "test_queries.txt").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------------------------------------ CSS3D
def css_objects() -> dict:
    def obj(color, size, shape, y, x):
        return {"color": color, "size": size, "shape": shape, "pos": [y, x]}

    train = [
        [obj("red", "large", "rectangle", 0.3, 0.3)],
        [obj("red", "large", "rectangle", 0.3, 0.3), obj("blue", "small", "circle", 0.7, 0.7)],
        [obj("green", "small", "triangle", 0.5, 0.5)],
        [],
    ]
    test = [
        [obj("yellow", "small", "circle", 0.25, 0.75)],
        [obj("yellow", "large", "circle", 0.25, 0.75)],
        [obj("yellow", "large", "circle", 0.25, 0.75)],
        [obj("gray", "large", "rectangle", 0.5, 0.5)],
    ]
    return {"train": train, "test": test}


def css_data() -> dict:
    objs = css_objects()
    return {
        "train": {
            "objects_img": objs["train"],
            "mods": [
                {"from": [0, 2], "to": [1, 1], "to_str": "add blue circle"},
                {"from": [0, 1], "to": [3, 3], "to_str": "remove everything"},
            ],
        },
        "test": {
            "objects_img": objs["test"],
            "labels": [0, 1, 1, 2],
            "mods": [{"from": [0, 3], "to": [1, 0], "to_str": "make it large"}],
        },
    }


def write_css3d(root: Path, data: dict | None = None, skip_images=(), images: bool = True) -> Path:
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    data = css_data() if data is None else data
    np.save(root / "css_toy_dataset_novel2_small.dup.npy", np.array(data, dtype=object), allow_pickle=True)
    if images:
        for split, d in data.items():
            for i in range(len(d["objects_img"])):
                name = f"css_{split}_{i:06d}.png"
                if name not in skip_images:
                    draw_image(root / "images" / name, name, size=(16, 16))
    return root


# -------------------------------------------------------------------------------------------------- MIT-States
MIT_FOLDERS = {
    "big dog": 1,
    "green apple": 1,
    "red apple": 2,
    "sliced apple": 1,
    "small dog": 1,
    "new wheel": 1,
    "old wheel": 1,
    "old persimmon": 1,
    "ripe persimmon": 2,
    "unripe persimmon": 1,
    "adj apple": 2,  # unlabelled: left out
    "misc": 1,  # not "adj noun": left out
}


def write_mitstates(root: Path) -> Path:
    for folder, count in MIT_FOLDERS.items():
        for k in range(count):
            draw_image(root / "images" / folder / f"{k}.jpg", f"{folder}{k}")
    (root / "images" / "red apple" / "notes.txt").write_text("not an image")
    return root
