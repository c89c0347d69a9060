"""Published results (``published.json``, shipped in the package) and how a run's protocol compares with theirs.

Each published row carries its source (paper, table) and its protocol (gallery, query text, reference masking,
model selection). A row measured under a protocol other than the run's is flagged with the difference spelled out
("gallery: val_union vs split_all", ours first), never silently compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DATA_FILE = Path(__file__).with_name("published.json")
PROTOCOL_KEYS = ("gallery", "text", "mask_reference", "model_selection")
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
                protocol=dict(r["protocol"]),
                derived=tuple(derived),
            )  # fmt: skip
        )
    return tuple(rows)


def rows_for(dataset: str) -> list[PublishedRow]:
    return [r for r in load() if r.dataset == dataset]


def run_protocol(config: dict) -> dict[str, object]:
    """A run's evaluation protocol in the vocabulary of ``published.json``."""
    d = config.get("dataset") or {}
    name = d.get("name")
    select = SELECTION.get((config.get("trainer") or {}).get("select_on", "test"), "test")
    if name == "fashioniq":
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
    return proto


def show_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def protocol_difference(ours: dict[str, object], theirs: dict[str, object]) -> tuple[list[str], list[str]]:
    """(differences "key: ours vs theirs", keys the source does not state)."""
    diffs, unknown = [], []
    for key in PROTOCOL_KEYS:
        mine, other = ours.get(key), theirs.get(key)
        if other is None:
            unknown.append(key)
        elif mine is not None and mine != other:
            diffs.append(f"{key}: {show_value(mine)} vs {show_value(other)}")
    return diffs, unknown
