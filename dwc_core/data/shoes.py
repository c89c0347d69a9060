"""Shoes (relative captions of Guo et al. 2018 on the Attribute Discovery images), as DWC / AMC / VAL load it.

Files under ``root``: ``relative_captions_shoes.json`` (list of ``{"ImageName", "ReferenceImageName",
"RelativeCaption"}``, names are basenames), ``train_im_names.txt`` and ``eval_im_names.txt`` (one basename per line),
images ``womens_*/*/*.jpg`` found by basename (directly under ``root`` as DWC expects, or under
``root/attributedata/`` as AMC expects).

Pairs of a split: for every name of the split list, in file order, every caption record (in file order) whose
target or reference is that name: reference = ``ReferenceImageName``, target = ``ImageName``, text = the stripped
caption. A record with both images in the list is therefore emitted twice, as in the papers' code.
Test gallery = the eval list in file order; hits are exact. A test pair with an image outside the eval list (29 in
the real files) is skipped and counted by default (``outside_eval_list: skip``; ``EvalSet.skipped_queries``,
notes); ``keep`` keeps it and scores it as a miss when its target is outside the gallery (its reference may be
missing from the gallery too, so nothing is masked). DWC's code has no such mode: it looks every pair's images up
in the eval list with ``list.index()``, which raises ``ValueError`` on these pairs, so its published numbers
cannot include them; ``keep`` exists to measure what keeping them would cost, not to reproduce DWC. Training label = image index of the target (targets are unique images).
"""

from __future__ import annotations

from pathlib import Path

from dwc_core.config.schema.datasets import DEFAULT_KS
from dwc_core.data.files import (
    ImageTable,
    JsonList,
    clean_text,
    read_lines,
    require_file,
    require_root,
    split_report,
)
from dwc_core.data.types import CIRDataset, EvalSet, Query, Triplet
from dwc_core.errors import DataError

TITLE = "Shoes"
LAYOUT = "relative_captions_shoes.json, train_im_names.txt, eval_im_names.txt and the womens_*/ image folders"
KEYS = ("ImageName", "ReferenceImageName", "RelativeCaption")


def read_records(path: Path) -> list[tuple[str, str, str]]:
    """(reference, target, caption) per record of ``relative_captions_shoes.json``."""
    doc = JsonList(require_file(path, TITLE, "relative captions"), TITLE, "caption records")
    out = []
    for i, entry in doc:
        if not isinstance(entry, dict):
            raise doc.bad(i, f"expected an object with {', '.join(KEYS)}, found {type(entry).__name__}.")
        for key in KEYS:
            if key not in entry:
                raise doc.bad(i, f"the key '{key}' is missing (expected {', '.join(KEYS)}).")
        names = []
        for key in ("ReferenceImageName", "ImageName"):
            value = entry[key]
            if not isinstance(value, str) or not value.strip():
                raise doc.bad(i, f"'{key}' must be an image file name, found {value!r}.")
            names.append(value.strip())
        text = clean_text(entry["RelativeCaption"], lambda problem, i=i: doc.bad(i, problem))
        out.append((names[0], names[1], text))
    return out


def read_names(path: Path) -> list[str]:
    require_file(path, TITLE, "image name list")
    return [line.strip() for _, line in read_lines(path, TITLE)]


def find_images(root: Path) -> tuple[dict[str, str], Path]:
    """basename → path of every ``womens_*/*/*.jpg``; the first match wins when a basename repeats."""
    for base in (root, root / "attributedata"):
        found: dict[str, str] = {}
        for path in sorted(base.glob("womens_*/*/*.jpg")):
            found.setdefault(path.name, str(path))
        if found:
            return found, base
    raise DataError(
        f"{TITLE}: no images found: {root}/womens_*/*/*.jpg (nor {root}/attributedata/womens_*/*/*.jpg) matches "
        "nothing. Unpack attributedata.tar.gz so that the womens_<type>/ folders sit directly under dataset.root."
    )


def split_pairs(names: list[str], records: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The papers' pair list of a split (records touching a listed name; both-ends-listed records twice)."""
    touching: dict[str, list[int]] = {}
    for k, (ref, target, _) in enumerate(records):
        touching.setdefault(target, []).append(k)
        if ref != target:
            touching.setdefault(ref, []).append(k)
    pairs = []
    for name in names:
        for k in sorted(touching.get(name, ())):
            pairs.append(records[k])
    return pairs


def load(cfg: dict, cache_dir: Path) -> CIRDataset:
    root = require_root(cfg, TITLE, LAYOUT)
    records = read_records(root / "relative_captions_shoes.json")
    train_names = read_names(root / "train_im_names.txt")
    eval_names = read_names(root / "eval_im_names.txt")
    on_disk, image_base = find_images(root)

    train_pairs = split_pairs(train_names, records)
    eval_set_names = set(eval_names)
    test_pairs = split_pairs(eval_names, records)
    outside = [p for p in test_pairs if p[0] not in eval_set_names or p[1] not in eval_set_names]
    keep_outside = cfg.get("outside_eval_list", "skip") == "keep"
    if not keep_outside:
        test_pairs = [p for p in test_pairs if p[0] in eval_set_names and p[1] in eval_set_names]

    table = ImageTable(TITLE, f"Unpack the missing images into {image_base}/womens_*/.")

    def want(name: str) -> None:
        # a name not found on disk gets the pattern it was sought under, for the missing-images message
        path = on_disk.get(name) or str(image_base / "womens_*" / "*" / name)
        table.want(name, path, str(Path(path).relative_to(image_base)))

    train_used, eval_used = set(), set(eval_names) | {n for p in test_pairs for n in p[:2]}
    for ref, target, _ in train_pairs:
        train_used.update((ref, target))
    for name in [n for p in train_pairs for n in p[:2]] + eval_names + [n for p in test_pairs for n in p[:2]]:
        want(name)
    table.check(cfg["missing_images"])
    missing = set(table.missing)

    train, skipped_triplets = [], 0
    for ref, target, text in train_pairs:
        r, t = table.index(ref), table.index(target)
        if r is None or t is None:
            skipped_triplets += 1
            continue
        train.append(Triplet(ref=r, text=text, target=t, label=t))

    gallery = [i for i in dict.fromkeys(table.index(n) for n in eval_names) if i is not None]
    queries, skipped_missing = [], 0
    for ref, target, text in test_pairs:
        r, t = table.index(ref), table.index(target)
        if r is None or t is None:
            skipped_missing += 1
            continue
        queries.append(Query(ref=r, text=text, target=t))
    notes = [
        f"gallery = eval_im_names.txt ({len(gallery)} images); pairs with both images listed appear twice"
    ]
    if outside and keep_outside:
        notes.append(
            f"{len(outside)} queries have an image outside eval_im_names.txt (kept; a target outside the gallery "
            "is a miss)"
        )
    elif outside:
        notes.append(f"{len(outside)} queries skipped: an image outside eval_im_names.txt")
    if skipped_missing:
        notes.append(f"{skipped_missing} queries skipped: missing images")
    test = EvalSet(
        name="test",
        queries=queries,
        gallery=gallery,
        ks=list(DEFAULT_KS["shoes"]),
        mask_reference=True,
        skipped_queries=(0 if keep_outside else len(outside)) + skipped_missing,
        notes="; ".join(notes),
    )
    info = {
        "root": str(root),
        "image_folder": str(image_base),
        "train_samples": len(train),
        "test_queries": len(queries),
        "gallery_size": len(gallery),
        "missing_images": len(missing),
        "missing_examples": table.missing_paths(),
        "skipped_queries": test.skipped_queries,
        "skipped_triplets": skipped_triplets,
        "queries_outside_eval_list": len(outside),
        "splits": {
            "test": split_report(len(train), len((train_used | eval_used) & missing), skipped_triplets)
        },
    }
    return CIRDataset(
        name="shoes",
        images=table.records,
        train=train,
        eval_sets={"test": test},
        num_labels=len(table.records),
        info=info,
    )
