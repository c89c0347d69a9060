"""Fashion200k (Han et al. 2017) with TIRG's query protocol, as TIRG, VAL, ComposeAE and DWC use it.

Files under ``root``: ``labels/*_<split>_detect_all.txt`` (``train`` / ``test``; one image per line:
``relative path<TAB>detection score<TAB>caption``), ``test_queries.txt`` (``source_path target_path`` per line,
TIRG's 33,480 queries) and the cropped images at ``<root>/<relative path>``.

* Captions are cleaned as TIRG does: stripped, ``.`` → ``dotmark``, ``?`` → ``questionmark``, ``&`` → ``andmark``,
  ``*`` → ``starmark``.
* Training pairs are sampled on the fly each epoch (TIRG): a *parent* caption is a caption with one word removed
  (a plain string replace, as in TIRG); images whose caption shares a parent with another caption are modifiable.
  For each of the N training images: if it is not modifiable draw random images until one is, pick one of its
  parents, a sibling caption different from its own, and a random image with that caption as the target.
  Deterministic from (seed, epoch) with a local ``random.Random``.
* Text: ``tirg`` = ``"replace <source word> with <target word>"`` (first source word absent from the target
  caption and vice versa); ``dwc`` appends ``" and get <target caption>"`` (DWC's code, train and test: it leaks
  the target caption, report both).
* Evaluation: gallery = every test image; a retrieved image is a hit when its caption equals the target's caption
  (``main`` rule). Training label = code of the target caption (sorted unique training captions), so images that
  share a caption are positives for label-aware losses.

Each relative path is one image: a path listed twice in a split is kept once (counted in ``info``).
"""

from __future__ import annotations

import random
from pathlib import Path

from dwc_core.config.schema.datasets import DEFAULT_KS
from dwc_core.data.files import (
    ImageTable,
    read_lines,
    remember_last,
    require_file,
    require_root,
    split_report,
)
from dwc_core.data.types import CIRDataset, EvalSet, Query, Triplet
from dwc_core.errors import DataError

TITLE = "Fashion200k"
LAYOUT = "labels/*_<split>_detect_all.txt, test_queries.txt and the women/ image folders"
MARKS = ((".", "dotmark"), ("?", "questionmark"), ("&", "andmark"), ("*", "starmark"))


def clean_caption(text: str) -> str:
    text = text.strip()
    for mark, word in MARKS:
        text = text.replace(mark, word)
    return text


def different_words(source: str, target: str) -> tuple[str, str]:
    """TIRG's word difference: the first source word not in the target and the first target word not in the
    source (the last word when there is none, as TIRG's loop leaves it)."""
    src, tgt = source.split(), target.split()
    src_word = next((w for w in src if w not in tgt), src[-1])
    tgt_word = next((w for w in tgt if w not in src), tgt[-1])
    return src_word, tgt_word


def modification_text(source: str, target: str, mode: str) -> str:
    src_word, tgt_word = different_words(source, target)
    text = f"replace {src_word} with {tgt_word}"
    return f"{text} and get {target}" if mode == "dwc" else text


def read_split(root: Path, split: str) -> tuple[list[tuple[str, str]], int]:
    """(relative path, cleaned caption) per image of a split, in file-name then line order; and the number of
    repeated paths dropped."""
    folder = root / "labels"
    if not folder.is_dir():
        raise DataError(
            f"{TITLE}: the label folder {folder} does not exist. dataset.root must hold {LAYOUT}."
        )
    files = sorted(p for p in folder.glob(f"*_{split}_detect_all.txt") if not p.name.startswith("._"))
    if not files:
        raise DataError(
            f"{TITLE}: no {split} label files in {folder} (expected e.g. dress_{split}_detect_all.txt). "
            "Download labels.zip of Fashion200k into dataset.root."
        )
    out: dict[str, str] = {}
    repeated = 0
    for path in files:
        for lineno, line in read_lines(path, TITLE):
            parts = line.split("\t")
            if len(parts) < 3 or not parts[0].strip():
                raise DataError(
                    f"{path}:{lineno}: {TITLE}: malformed line {line[:80]!r}: expected "
                    "'<relative image path><TAB><detection score><TAB><caption>'."
                )
            caption = clean_caption(parts[2])
            if not caption:
                raise DataError(
                    f"{path}:{lineno}: {TITLE}: empty caption for {parts[0].strip()}. Fix or remove the line."
                )
            rel = parts[0].strip()
            if rel in out:
                repeated += 1
                continue
            out[rel] = caption
    return list(out.items()), repeated


def read_queries(path: Path) -> list[tuple[int, str, str]]:
    require_file(path, TITLE, "TIRG test queries: 'source_path target_path' per line")
    out = []
    for lineno, line in read_lines(path, TITLE):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(
                f"{path}:{lineno}: {TITLE}: malformed line {line[:80]!r}: expected 'source_path target_path'."
            )
        out.append((lineno, parts[0], parts[1]))
    return out


class CaptionIndex:
    """TIRG's caption index of the training images (positions 0..n-1 of the image table)."""

    def __init__(self, captions: list[str]):
        self.captions = captions
        self.images_of: dict[str, list[int]] = {}
        for i, c in enumerate(captions):
            self.images_of.setdefault(c, []).append(i)
        self.children: dict[str, list[str]] = {}
        for c in self.images_of:
            for w in c.split():
                parent = c.replace(w, "").replace("  ", " ").strip()
                kids = self.children.setdefault(parent, [])
                if c not in kids:
                    kids.append(c)
        self.parents: list[list[str]] = [[] for _ in captions]
        for parent, kids in self.children.items():
            if len(kids) >= 2:
                for c in kids:
                    for i in self.images_of[c]:
                        self.parents[i].append(parent)
        self.modifiable = sum(1 for p in self.parents if p)

    def sample(self, rng: random.Random, idx: int) -> tuple[int, int]:
        n = len(self.captions)
        while not self.parents[idx]:
            idx = rng.randrange(n)
        own = self.captions[idx]
        while True:
            caption = rng.choice(self.children[rng.choice(self.parents[idx])])
            if caption != own:
                break
        return idx, rng.choice(self.images_of[caption])


def load(cfg: dict, cache_dir: Path) -> CIRDataset:
    root = require_root(cfg, TITLE, LAYOUT)
    mode = cfg["text"]
    train_rows, rep_train = read_split(root, "train")
    test_rows, rep_test = read_split(root, "test")
    query_rows = read_queries(root / "test_queries.txt")

    table = ImageTable(TITLE, f"Unpack the cropped images (women.tar.gz) into {root}.")
    for rel, caption in train_rows + test_rows:
        table.want(rel, str(root / rel), caption)
    table.check(cfg["missing_images"])
    train_caption = dict(train_rows)
    train_rel = [rel for rel, _ in train_rows if table.index(rel) is not None]
    index = CaptionIndex([train_caption[rel] for rel in train_rel])
    image_of = [table.index(rel) for rel in train_rel]  # training position → image index
    if train_rel and not index.modifiable:
        raise DataError(
            f"{TITLE}: no training image is modifiable (no two training captions differ by one word), so no "
            "training pair can be sampled. Check labels/*_train_detect_all.txt."
        )
    label_codes = {c: k for k, c in enumerate(sorted(index.images_of))}

    @remember_last
    def sampler(epoch: int, seed: int) -> list[Triplet]:
        rng = random.Random(f"fashion200k:{seed}:{epoch}")
        out = []
        for pos in range(len(train_rel)):
            src, tgt = index.sample(rng, pos)
            src_cap, tgt_cap = index.captions[src], index.captions[tgt]
            out.append(
                Triplet(
                    image_of[src],
                    modification_text(src_cap, tgt_cap, mode),
                    image_of[tgt],
                    label_codes[tgt_cap],
                )
            )
        return out

    test_eval = _eval_set(test_rows, query_rows, table, mode)
    missing = set(table.missing)
    info = {
        "root": str(root),
        "text": mode,
        "train_images": len(train_rel),
        "train_captions": len(index.images_of),
        "modifiable_images": index.modifiable,
        "train_samples": len(train_rel),
        "test_queries": len(test_eval.queries),
        "gallery_size": len(test_eval.gallery),
        "missing_images": len(missing),
        "missing_examples": table.missing_paths(),
        "skipped_queries": test_eval.skipped_queries,
        "repeated_paths": rep_train + rep_test,
        "splits": {"test": split_report(len(train_rel), len(missing))},
    }
    return CIRDataset(
        name="fashion200k",
        images=table.records,
        train=sampler(0, 0),
        eval_sets={"test": test_eval},
        num_labels=len(label_codes),
        info=info,
        sampler=sampler,
    )


def _eval_set(test_rows, query_rows, table: ImageTable, mode: str) -> EvalSet:
    caption_of = dict(test_rows)
    present = [rel for rel, _ in test_rows if table.index(rel) is not None]
    gallery = [table.index(rel) for rel in present]
    code = {c: k for k, c in enumerate(sorted({caption_of[rel] for rel in present}))}
    gallery_keys = [code[caption_of[rel]] for rel in present]
    queries, query_keys = [], []
    unlisted = missing = 0
    for _, src, tgt in query_rows:
        if src not in caption_of or tgt not in caption_of:
            unlisted += 1
            continue
        s, t = table.index(src), table.index(tgt)
        if s is None or t is None:
            missing += 1
            continue
        src_cap, tgt_cap = caption_of[src], caption_of[tgt]
        queries.append(Query(ref=s, text=modification_text(src_cap, tgt_cap, mode), target=t))
        query_keys.append(code[tgt_cap])
    notes = [f"gallery = all {len(gallery)} test images; hit = same caption as the target; text {mode}"]
    if unlisted:
        notes.append(f"{unlisted} queries skipped: an image not in labels/*_test_detect_all.txt")
    if missing:
        notes.append(f"{missing} queries skipped: missing images")
    return EvalSet(
        name="test",
        queries=queries,
        gallery=gallery,
        ks=list(DEFAULT_KS["fashion200k"]),
        mask_reference=True,
        match={"main": (gallery_keys, query_keys)},
        skipped_queries=unlisted + missing,
        notes="; ".join(notes),
    )
