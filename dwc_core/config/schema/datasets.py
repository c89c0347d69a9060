"""Options of the ``dataset:`` section, common and per dataset.

Each dataset's own options are listed in :data:`PER_DATASET`; ``dataset_section(name)`` merges them over the
common ones (a dataset may override a common option's default, e.g. ``image_size``).
"""

from __future__ import annotations

from dwc_core.config.schema import Opt, Section

DATASET_NAMES = ("synthetic", "fashioniq", "shoes", "fashion200k", "css3d", "mitstates")

COMMON: Section = {
    "name": Opt("str", None, choices=DATASET_NAMES, help="which dataset"),
    "root": Opt("path", None, nullable=True, help="dataset folder in its official layout"),
    "image_size": Opt("int", 224, help="square side of the images fed to the model", min=8),
    "cache_dir": Opt(
        "path", None, nullable=True, help="decoded-image cache folder (default: <project>/runs/.cache)"
    ),
    "missing_images": Opt(
        "str", "error", choices=("error", "skip"), help="stop on missing images, or drop affected queries"
    ),
    "augment": Opt("str", "none", choices=("none", "hflip"), help="training augmentation"),
}

PER_DATASET: dict[str, Section] = {
    "synthetic": {
        "image_size": Opt("int", 64, help="square side of the rendered scenes", min=16),
        "num_train": Opt("int", 4000, help="training queries (reference, text, target)", min=10),
        "num_test": Opt("int", 1000, help="test queries", min=10),
        "max_objects": Opt("int", 4, help="objects per scene at most", min=1, max=9),
        "grid": Opt("int", 3, help="positions per side of the placement grid", min=2, max=5),
        "data_seed": Opt("int", 0, help="seed of the generator (independent of the training seed)"),
        "novel_split": Opt(
            "bool", False, help="test on attribute combinations never seen in training (novel compositions)"
        ),
    },
    "fashioniq": {
        "category": Opt(
            "str", "dress", choices=("dress", "shirt", "toptee", "all"), help="FashionIQ category"
        ),
        "image_dir": Opt("str", "all_imgs", help="image folder under root (DWC: all_imgs, CLIP4Cir: images)"),
        "image_ext": Opt("str", "png", help="image file extension (DWC: png, CLIP4Cir: jpg)"),
        "protocol": Opt(
            "str",
            "dwc",
            choices=("dwc", "clip4cir", "custom"),
            help="preset for gallery, mask_reference and text",
        ),
        "gallery": Opt("str", None, nullable=True, choices=("val_union", "split_all"), help="test gallery"),
        "mask_reference": Opt(
            "bool", None, nullable=True, help="remove the reference image from the ranking"
        ),
        "text": Opt(
            "str", None, nullable=True, choices=("dwc", "joined", "per_caption"), help="query text form"
        ),
    },
    "shoes": {
        "outside_eval_list": Opt(
            "str",
            "skip",
            choices=("skip", "keep"),
            help="test pairs with an image outside eval_im_names.txt: skip (counted), or keep them (a target "
            "outside the gallery is then a miss; DWC's code cannot run on such pairs)",
        ),
    },
    "fashion200k": {
        "text": Opt(
            "str",
            "tirg",
            choices=("tirg", "dwc"),
            help='"replace X with Y" (tirg) or with " and get <target caption>" (dwc)',
        ),
    },
    "css3d": {
        "render_2d": Opt("bool", False, help="render the 2D version of each scene from objects_img"),
    },
    "mitstates": {},
}


def dataset_section(name: str) -> Section:
    return {**COMMON, **PER_DATASET.get(name, {})}


FASHIONIQ_PRESETS = {
    # protocol: (gallery, mask_reference, text)
    "dwc": ("val_union", True, "dwc"),
    "clip4cir": ("split_all", False, "joined"),
    "custom": ("val_union", True, "dwc"),
}

DEFAULT_KS = {
    "synthetic": [1, 5, 10, 50],
    "fashioniq": [10, 50],
    "shoes": [1, 10, 50],
    "fashion200k": [1, 10, 50],
    "css3d": [1, 5, 10, 50],
    "mitstates": [1, 5, 10],
}


def finalize_dataset(cfg: dict) -> None:
    """Fill options whose default depends on other options (FashionIQ protocol presets), in place."""
    if cfg.get("name") == "fashioniq":
        gallery, mask, text = FASHIONIQ_PRESETS[cfg.get("protocol") or "dwc"]
        if cfg.get("gallery") is None:
            cfg["gallery"] = gallery
        if cfg.get("mask_reference") is None:
            cfg["mask_reference"] = mask
        if cfg.get("text") is None:
            cfg["text"] = text
