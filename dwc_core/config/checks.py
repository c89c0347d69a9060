"""Checks of a resolved run config against the machine, before anything is created (torch-free).

``dwc run`` calls :func:`preflight` before it registers a run (a failure exits 2 and creates nothing); the training
process calls it again (the same message) because a queued run may be started later or elsewhere. What can only be
known once the data is loaded — gallery sizes against Recall@K cut-offs, the size of a validation split — is checked
by :func:`check_eval_sizes` in the training process, before the first step; where the config alone bounds the
gallery (the synthetic set), :func:`check_cutoffs` refuses it earlier (`dwc run`, `dwc queue`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from dwc_core.errors import ConfigError, DataError

#: a validation split smaller than this gives meaningless recalls; ``trainer.val_min_queries`` lowers it explicitly
VAL_MIN_QUERIES = 50


def check_cutoffs(config: dict) -> None:
    """What the config alone tells about Recall@K: the synthetic set's gallery holds at most 2 × num_test images
    (references and targets of the test queries), so a K at least that large is refused before a run exists.
    Other datasets' galleries are known once loaded (:func:`check_eval_sizes`)."""
    ds = config["dataset"]
    if ds["name"] != "synthetic":
        return
    from dwc_core.config.schema.datasets import DEFAULT_KS

    ks = config["eval"].get("ks")
    most = 2 * int(ds["num_test"])
    too_big = [k for k in (ks or DEFAULT_KS["synthetic"]) if k >= most]
    if too_big:
        source = "eval.ks" if ks else "the synthetic protocol's K"
        raise ConfigError(
            f"Recall@{too_big[0]} on the test split is meaningless: with dataset.num_test = {ds['num_test']} its "
            f"gallery holds at most {most} images (K = {', '.join(map(str, too_big))} from {source} must be smaller "
            "than the gallery). Use a larger test set (dataset.num_test) or smaller cut-offs (eval.ks)."
        )


def cache_dir_of(config: dict, project: Path) -> Path:
    return Path(config["dataset"].get("cache_dir") or project / "runs" / ".cache")


def preflight(config: dict, project: Path) -> None:
    """Raise a DataError/ConfigError (exit 2) naming the option when the dataset root or the cache folder cannot
    work on this machine, or when the config alone shows a Recall@K cut-off to be meaningless."""
    check_cutoffs(config)
    ds = config["dataset"]
    if ds["name"] != "synthetic":
        from dwc_core.data import LOADERS
        from dwc_core.data.files import require_root

        module = importlib.import_module(LOADERS[ds["name"]])
        require_root(ds, getattr(module, "TITLE", ds["name"]), getattr(module, "LAYOUT", "the dataset files"))
    explicit = bool(ds.get("cache_dir"))
    cache = cache_dir_of(config, project)
    what = f"dataset.cache_dir = {cache}" if explicit else f"the decoded-image cache folder {cache}"
    hint = (
        "Set dataset.cache_dir to a writable folder."
        if explicit
        else "Make runs/ writable or set dataset.cache_dir."
    )
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{what}: cannot create it ({exc.strerror}). {hint}") from None
    if not os.access(cache, os.W_OK | os.X_OK):
        raise DataError(f"{what}: not writable. {hint}")


def check_eval_sizes(config: dict, eval_sets: dict, val_queries: int | None = None) -> None:
    """Recall@K with K at least the gallery size is 100 for any model; a tiny validation split selects at random.
    ``eval_sets``: name → object with ``gallery`` and ``ks``."""
    ks = config["eval"].get("ks")
    for name, es in eval_sets.items():
        cutoffs = list(ks or es.ks)
        gallery = len(es.gallery)
        too_big = [k for k in cutoffs if k >= gallery]
        if too_big:
            source = "eval.ks" if ks else f"the {config['dataset']['name']} protocol's K"
            raise ConfigError(
                f"Recall@{too_big[0]} on the {name} split is meaningless: its gallery holds only {gallery} images "
                f"(K = {', '.join(map(str, too_big))} from {source} must be smaller than the gallery). "
                f"{_larger_gallery(config, name)} or smaller cut-offs (eval.ks)."
            )
    if val_queries is not None:
        minimum = int(config["trainer"].get("val_min_queries", VAL_MIN_QUERIES))
        if val_queries < minimum:
            raise ConfigError(
                f"trainer.val_fraction = {config['trainer']['val_fraction']} holds out only {val_queries} validation "
                f"queries (minimum {minimum}): model selection on so few is noise. Raise trainer.val_fraction, or "
                "allow it explicitly with trainer.val_min_queries."
            )


def _larger_gallery(config: dict, split: str) -> str:
    """What makes this split's gallery larger: the option that sizes it, not one that leaves it as it is."""
    if split == "val":  # held out of the training split
        return "Hold out more with trainer.val_fraction"
    if config["dataset"]["name"] == "synthetic":
        return "Use a larger test set (dataset.num_test)"
    return f"Check that dataset.root holds the whole split (dwc data check {config['dataset']['name']})"
