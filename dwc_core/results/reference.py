"""Published results (``published.json``, shipped in the package) and how a run's protocol compares with theirs.

Each published row carries its source (paper, table) and its protocol (gallery, query text, reference masking,
model selection). A row measured under a protocol other than the run's is flagged with the difference spelled out
("gallery: val_union vs split_all", ours first), never silently compared.

A run's protocol is read from its recorded config (:func:`run_protocol`), including the settings that change which
queries are scored (:data:`QUERY_SET_KEYS`): ``dataset.missing_images: skip`` drops the queries whose images are
missing, and Shoes' ``dataset.outside_eval_list: keep`` adds the 29 test pairs with an image outside
``eval_im_names.txt``. The published rows' values for these are implied where ``published.json`` does not state
them (:func:`implied_protocol`): every paper scored its dataset's full query set (none drops queries for missing
images); the rows on DWC's Shoes gallery (``eval_im_names.txt``: DWC, AMC) cannot include the pairs outside it
(their code looks every image up in that list with ``list.index()``), i.e. ``outside_eval_list: skip``; VAL's
gallery (the eval list plus every test pair's images) scores them, i.e. ``keep`` (its gallery differs anyway).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).with_name("published.json")
PROTOCOL_KEYS = ("gallery", "text", "mask_reference", "model_selection")
# config keys (dataset section) that change which queries are scored, with the value that scores the full set
QUERY_SET_KEYS = ("outside_eval_list", "missing_images")
QUERY_SET_DEFAULTS = {"outside_eval_list": "skip", "missing_images": "error"}
# the datasets whose loader has the option (missing_images is common to all)
QUERY_SET_DATASETS = {"outside_eval_list": ("shoes",)}
COMPARED_KEYS = PROTOCOL_KEYS + QUERY_SET_KEYS
SELECTION = {"test": "test", "val_split": "val_split", "last": "last"}
# datasets with no published rows here, and why
NO_ROWS = {
    "synthetic": "dwc's own synthetic benchmark: no published results exist",
    "css3d": "no published CSS3D numbers are shipped (DWC published none; TIRG's are on its own CSS3D protocol)",
    "mitstates": "no published MIT-States numbers are shipped",
}


@dataclass(frozen=True)
class PublishedRow:
    dataset: str
    method: str
    venue: str
    backbone: str
    metrics: dict[str, float]
    source: str
    protocol: dict[str, object]
    derived: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return f"{self.method} ({self.venue})"


@lru_cache(maxsize=1)
def load() -> tuple[PublishedRow, ...]:
    doc = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    rows = []
    for r in doc["rows"]:
        metrics = {k: float(v) for k, v in r["metrics"].items()}
        derived = []
        if r["dataset"] in ("shoes", "fashion200k") and "mean" not in metrics:
            ks = [k for k in ("R@1", "R@10", "R@50") if k in metrics]
            if len(ks) == 3:  # our `mean` is the mean of the dataset's K values
                metrics["mean"] = round(sum(metrics[k] for k in ks) / 3, 2)
                derived.append("mean")
        rows.append(
            PublishedRow(
                dataset=r["dataset"],
                method=r["method"],
                venue=r["venue"],
                backbone=r["backbone"],
                metrics=metrics,
                source=r["source"],
                protocol={**implied_protocol(r["dataset"], r["protocol"]), **r["protocol"]},
                derived=tuple(derived),
            )  # fmt: skip
        )
    return tuple(rows)


def rows_for(dataset: str) -> list[PublishedRow]:
    return [r for r in load() if r.dataset == dataset]


def implied_protocol(dataset: str, stated: dict[str, object]) -> dict[str, object]:
    """The query-set settings a published row was measured with, where its source implies them (see the module
    summary); a key left out is not stated."""
    out: dict[str, object] = {"missing_images": "error"}  # the papers scored the full query set
    if dataset == "shoes" and stated.get("gallery") == "eval_im_names.txt":
        # list.index() over eval_im_names.txt cannot score the pairs outside it
        out["outside_eval_list"] = "skip"
    elif dataset == "shoes" and stated.get("gallery") == "test images and pairs":
        # VAL's gallery adds every pair's images to the eval list, so it scores those pairs too
        out["outside_eval_list"] = "keep"
    return out


def run_protocol(config: dict) -> dict[str, object]:
    """A run's evaluation protocol in the vocabulary of ``published.json``, from its recorded config: the
    FashionIQ gallery / text / masking as the loader resolved them (preset filled in), Fashion200k's text, and
    the query-set settings (:data:`QUERY_SET_KEYS`) of the datasets with published rows."""
    d = dict(config.get("dataset") or {})
    name = d.get("name")
    select = SELECTION.get((config.get("trainer") or {}).get("select_on", "test"), "test")
    if name == "fashioniq":
        from dwc_core.config.schema.datasets import finalize_dataset

        finalize_dataset(d)  # an older config without the three keys: the preset the loader would apply
        proto = {
            "gallery": d.get("gallery"),
            "text": d.get("text"),
            "mask_reference": d.get("mask_reference"),
        }
    elif name == "shoes":
        proto = {"gallery": "eval_im_names.txt", "text": "caption", "mask_reference": True}
    elif name == "fashion200k":
        proto = {"gallery": "all test images", "text": d.get("text", "tirg"), "mask_reference": True}
    else:
        proto = {}
    proto["model_selection"] = select
    if name in ("fashioniq", "shoes", "fashion200k"):
        for key in QUERY_SET_KEYS:
            if name in QUERY_SET_DATASETS.get(key, (name,)):
                proto[key] = d.get(key) or QUERY_SET_DEFAULTS[key]
    return proto


def show_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def protocol_difference(ours: dict[str, object], theirs: dict[str, object]) -> tuple[list[str], list[str]]:
    """(differences "key: ours vs theirs", keys the source does not state). A query-set key counts only where
    our run has it (its dataset has the option)."""
    diffs, unknown = [], []
    for key in COMPARED_KEYS:
        mine, other = ours.get(key), theirs.get(key)
        if key in QUERY_SET_KEYS and key not in ours:
            continue
        if other is None:
            unknown.append(key)
        elif mine is not None and mine != other:
            diffs.append(f"{key}: {show_value(mine)} vs {show_value(other)}")
    return diffs, unknown
