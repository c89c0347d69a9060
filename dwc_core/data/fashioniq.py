"""FashionIQ in its official layout (XiaoxiaoGuo/fashion-iq), evaluated on the val split as every paper does.

Files under ``root``: ``captions/cap.<cat>.<split>.json`` (list of ``{"candidate", "target", "captions": [c1, c2]}``),
``image_splits/split.<cat>.<split>.json`` (list of asins) and ``<image_dir>/<asin>.<image_ext>`` (DWC:
``all_imgs/*.png``, CLIP4Cir: ``images/*.jpg``). Splits used: ``train`` (triplets) and ``val`` (queries).

Protocol options (presets ``protocol: dwc | clip4cir`` fill the three when not given):

* ``gallery``: ``val_union`` = the ordered union of the reference and target images of the val queries (VAL, DWC,
  AMC); ``split_all`` = every image of ``split.<cat>.val.json`` (CLIP4Cir, SPRC).
* ``mask_reference``: remove the query's reference image from its ranking.
* ``text``: ``dwc`` = ``"<BOS> c1 <AND> c2 <EOS>"``; ``joined`` = CLIP4Cir's ``"C1 and c2"`` (each caption
  stripped of ``.?, `` at both ends, the first one capitalised); ``per_caption`` = one query/triplet per caption
  (VAL).

Training label = index of the target in ``split.<cat>.train.json`` (offset per category when ``category: all``);
targets absent from that file get fresh labels after the last one. ``category: all`` trains on the three
categories together and gives one evaluation set per category.
"""

from __future__ import annotations

from pathlib import Path

from dwc_core.config.schema.datasets import DEFAULT_KS
from dwc_core.data.files import ImageTable, JsonList, clean_text, require_file, require_root, split_report
from dwc_core.data.types import CIRDataset, EvalSet, Query, Triplet
from dwc_core.errors import DataError

TITLE = "FashionIQ"
CATEGORIES = ("dress", "shirt", "toptee")
LAYOUT = "captions/, image_splits/ and the image folder (all_imgs/ or images/)"


def query_texts(captions: list[str], mode: str) -> list[str]:
    """The modification text(s) of one FashionIQ entry under a text protocol."""
    c1, c2 = captions
    if mode == "dwc":
        return [f"<BOS> {c1} <AND> {c2} <EOS>"]
    if mode == "joined":
        return [f"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"]
    if mode == "per_caption":
        return [c1, c2]
    raise DataError(f"{TITLE}: dataset.text = {mode!r} is not allowed. Allowed: dwc | joined | per_caption.")


def _asin(value, bad) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad(f"expected an image name (asin string), found {value!r}.")
    return value.strip()


def read_captions(path: Path) -> list[tuple[str, str, list[str]]]:
    """(candidate, target, [c1, c2]) per entry of a ``cap.<cat>.<split>.json`` file."""
    doc = JsonList(
        require_file(path, TITLE, "relative captions"), TITLE, '{"candidate", "target", "captions"}'
    )
    out = []
    for i, entry in doc:
        if not isinstance(entry, dict):
            raise doc.bad(
                i, f"expected an object with candidate, target and captions, found {type(entry).__name__}."
            )
        for key in ("candidate", "target", "captions"):
            if key not in entry:
                raise doc.bad(
                    i, f"the key '{key}' is missing (test-split files have no targets: use train and val)."
                )
        caps = entry["captions"]
        if not isinstance(caps, list) or len(caps) != 2:
            raise doc.bad(i, f"'captions' must be a list of two strings, found {caps!r}.")
        texts = [clean_text(c, lambda problem, i=i: doc.bad(i, problem)) for c in caps]
        bad = lambda problem, i=i: doc.bad(i, problem)  # noqa: E731
        out.append((_asin(entry["candidate"], bad), _asin(entry["target"], bad), texts))
    return out


def read_split(path: Path) -> list[str]:
    doc = JsonList(require_file(path, TITLE, "image split"), TITLE, "image names")
    return [_asin(v, lambda problem, i=i: doc.bad(i, problem)) for i, v in doc]


def _ext_hint(folder: Path, ext: str) -> str:
    counts: dict[str, int] = {}
    for entry in folder.iterdir():
        suffix = entry.suffix.lower().lstrip(".")
        counts[suffix] = counts.get(suffix, 0) + 1
    hint = f"Download the missing images into {folder}."
    if not counts.get(ext.lower()) and counts:
        common = max(counts, key=counts.get)
        hint += f" (The folder holds no .{ext} files but {counts[common]} .{common} files: set dataset.image_ext: {common}?)"
    return hint


def load(cfg: dict, cache_dir: Path) -> CIRDataset:
    root = require_root(cfg, TITLE, LAYOUT)
    cats = list(CATEGORIES) if cfg["category"] == "all" else [cfg["category"]]
    text_mode, gallery_mode = cfg["text"], cfg["gallery"]
    image_dir = root / cfg["image_dir"]
    ext = str(cfg["image_ext"]).lstrip(".")
    if not image_dir.is_dir():
        raise DataError(
            f"{TITLE}: image folder {image_dir} does not exist. Set dataset.image_dir to the folder under the root "
            "that holds <asin>.<ext> files (DWC: all_imgs, CLIP4Cir: images) and dataset.image_ext (png or jpg)."
        )
    data = {}
    for cat in cats:
        data[cat] = {
            "train": read_captions(root / "captions" / f"cap.{cat}.train.json"),
            "val": read_captions(root / "captions" / f"cap.{cat}.val.json"),
            "train_split": read_split(root / "image_splits" / f"split.{cat}.train.json"),
            "val_split": read_split(root / "image_splits" / f"split.{cat}.val.json"),
        }

    table = ImageTable(TITLE, lambda: _ext_hint(image_dir, ext))
    used: dict[str, set[str]] = {cat: set() for cat in cats}

    def want(cat: str, asin: str) -> None:
        table.want(asin, str(image_dir / f"{asin}.{ext}"), asin)
        used[cat].add(asin)

    for cat in cats:
        d = data[cat]
        for cand, target, _ in d["train"] + d["val"]:
            want(cat, cand)
            want(cat, target)
        if gallery_mode == "split_all":
            for asin in d["val_split"]:
                want(cat, asin)
    table.check(cfg["missing_images"])
    missing = set(table.missing)

    train, splits, eval_sets = [], {}, {}
    labels: dict[tuple[str, str], int] = {}
    offset = 0
    for cat in cats:
        for pos, asin in enumerate(data[cat]["train_split"]):
            labels.setdefault((cat, asin), offset + pos)
        offset += len(data[cat]["train_split"])
    extra_labels = 0
    for cat in cats:
        n_before, skipped_triplets = len(train), 0
        for cand, target, caps in data[cat]["train"]:
            ref, tgt = table.index(cand), table.index(target)
            texts = query_texts(caps, text_mode)
            if ref is None or tgt is None:
                skipped_triplets += len(texts)
                continue
            if (cat, target) not in labels:
                labels[(cat, target)] = offset + extra_labels
                extra_labels += 1
            train.extend(Triplet(ref=ref, text=t, target=tgt, label=labels[(cat, target)]) for t in texts)
        eval_sets[cat] = _eval_set(cat, data[cat], table, cfg)
        splits[cat] = split_report(len(train) - n_before, len(used[cat] & missing), skipped_triplets)

    info = {
        "root": str(root),
        "categories": cats,
        "protocol": {
            "protocol": cfg.get("protocol"), "gallery": gallery_mode, "mask_reference": bool(cfg["mask_reference"]),
            "text": text_mode,
        },
        "train_samples": len(train),
        "test_queries": sum(len(e.queries) for e in eval_sets.values()),
        "gallery_size": sum(len(e.gallery) for e in eval_sets.values()),
        "missing_images": len(missing),
        "missing_examples": table.missing_paths(),
        "skipped_queries": sum(e.skipped_queries for e in eval_sets.values()),
        "skipped_triplets": sum(s["skipped_triplets"] for s in splits.values()),
        "train_targets_outside_split": extra_labels,
        "splits": splits,
    }  # fmt: skip
    return CIRDataset(
        name="fashioniq",
        images=table.records,
        train=train,
        eval_sets=eval_sets,
        num_labels=offset + extra_labels,
        info=info,
    )


def _eval_set(cat: str, d: dict, table: ImageTable, cfg: dict) -> EvalSet:
    queries: list[Query] = []
    skipped_missing = 0
    for cand, target, caps in d["val"]:
        ref, tgt = table.index(cand), table.index(target)
        texts = query_texts(caps, cfg["text"])
        if ref is None or tgt is None:
            skipped_missing += len(texts)
            continue
        queries.extend(Query(ref=ref, text=t, target=tgt) for t in texts)
    gallery: list[int] = []
    seen: set[int] = set()
    if cfg["gallery"] == "split_all":
        members = [table.index(a) for a in d["val_split"]]
    else:
        members = [i for q in queries for i in (q.ref, q.target)]
    for i in members:
        if i is not None and i not in seen:
            seen.add(i)
            gallery.append(i)
    outside = [q for q in queries if q.target not in seen]
    if outside:
        queries = [q for q in queries if q.target in seen]
    notes = [
        f"gallery {cfg['gallery']} ({len(gallery)} images), text {cfg['text']}, "
        f"reference {'masked' if cfg['mask_reference'] else 'kept in the ranking'}"
    ]
    if skipped_missing:
        notes.append(f"{skipped_missing} queries skipped: missing images")
    if outside:
        notes.append(f"{len(outside)} queries skipped: target not in split.{cat}.val.json")
    return EvalSet(
        name=cat,
        queries=queries,
        gallery=gallery,
        ks=list(DEFAULT_KS["fashioniq"]),
        mask_reference=bool(cfg["mask_reference"]),
        skipped_queries=skipped_missing + len(outside),
        notes="; ".join(notes),
    )
