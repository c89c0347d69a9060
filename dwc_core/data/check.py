"""``check_dataset``: load a dataset's annotations, look for its image files and report per split (torch-free).

The report is what ``dwc data check`` prints. Missing images never stop the check: the dataset is loaded with
``missing_images: skip`` so that every count is known, and ``ok`` says whether a run with the configured policy
would start (``error`` + missing images = it would stop).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dwc_core.data import load_dataset
from dwc_core.data.types import CIRDataset
from dwc_core.errors import DataError

SPLIT_KEYS = ("train_samples", "test_queries", "gallery_size", "missing_images", "skipped_queries")


def split_reports(ds: CIRDataset) -> dict[str, dict]:
    """One object per evaluation set (per category for FashionIQ ``category: all``) with :data:`SPLIT_KEYS`."""
    info = ds.info
    out = {}
    for name, es in ds.eval_sets.items():
        per = info.get("splits", {}).get(name, {})
        out[name] = {
            "train_samples": int(per.get("train_samples", info.get("train_samples", len(ds.train)))),
            "test_queries": len(es.queries),
            "gallery_size": len(es.gallery),
            "missing_images": int(per.get("missing_images", info.get("missing_images", 0))),
            "skipped_queries": int(es.skipped_queries),
            "notes": es.notes,
        }
    return out


def verify_images(ds: CIRDataset, threads: int = 2, size: int = 32) -> list[str]:
    """Decode every image file once (at a small size); the messages of those that fail."""
    from dwc_core.data.loading import decode_image

    def one(path: str) -> str | None:
        try:
            decode_image(path, size)
        except DataError as exc:
            return str(exc)
        return None

    paths = [rec.path for rec in ds.images if rec.path is not None]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return [msg for msg in pool.map(one, paths) if msg]


def check_dataset(cfg: dict, cache_dir: str | os.PathLike, verify: bool = False) -> dict:
    """Report on the dataset the (validated) ``dataset:`` section ``cfg`` describes.

    Keys: ``dataset``, ``root``, ``images``, ``missing_images`` (total), ``missing_examples``, ``policy``, ``ok``,
    ``splits`` (name → :data:`SPLIT_KEYS` + ``notes``), ``info`` (the loader's extra figures) and, with
    ``verify``, ``corrupt_images`` / ``corrupt_examples``. Raises :class:`DataError` for what no policy can skip
    (missing root or annotation files, malformed lines).
    """
    policy = cfg.get("missing_images", "error")
    ds = load_dataset({**cfg, "missing_images": "skip"}, Path(cache_dir))
    info = ds.info
    missing = int(info.get("missing_images", 0))
    report = {
        "dataset": ds.name,
        "root": info.get("root", cfg.get("root")),
        "images": len(ds.images),
        "missing_images": missing,
        "missing_examples": list(info.get("missing_examples", [])),
        "policy": policy,
        "ok": not (missing and policy == "error"),
        "splits": split_reports(ds),
        "info": {k: v for k, v in info.items() if k not in ("splits", "missing_examples")},
    }
    if verify:
        problems = verify_images(ds)
        report["corrupt_images"] = len(problems)
        report["corrupt_examples"] = problems[:5]
        report["ok"] = report["ok"] and not problems
    return report
