"""Datasets: one module per dataset, each with ``load(cfg, cache_dir) -> CIRDataset`` (torch-free).

The image pipeline that feeds torch (decoded-image cache, DataLoaders) lives in :mod:`dwc_core.data.loading`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from dwc_core.data.types import CIRDataset, EvalSet, ImageRecord, Query, Triplet

LOADERS = {
    "synthetic": "dwc_core.data.synthetic",
    "fashioniq": "dwc_core.data.fashioniq",
    "shoes": "dwc_core.data.shoes",
    "fashion200k": "dwc_core.data.fashion200k",
    "css3d": "dwc_core.data.css3d",
    "mitstates": "dwc_core.data.mitstates",
}


def load_dataset(cfg: dict, cache_dir: str | Path) -> CIRDataset:
    """Load the dataset a (validated) ``dataset:`` config section describes."""
    module = importlib.import_module(LOADERS[cfg["name"]])
    return module.load(cfg, Path(cache_dir))


__all__ = ["CIRDataset", "EvalSet", "ImageRecord", "Query", "Triplet", "load_dataset", "LOADERS"]
