"""Reading annotation files and checking image files, shared by the dataset loaders (torch-free).

Every problem becomes a :class:`~dwc_core.errors.DataError` that names the file (and the line, for JSON and text
annotations) and says what is allowed. Missing images follow ``dataset.missing_images``: ``error`` stops with the
count and the first few paths, ``skip`` lets the loader drop what uses them (see :class:`ImageTable`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dwc_core.data.types import ImageRecord
from dwc_core.errors import DataError

SHOW_MISSING = 5  # paths quoted in a missing-images message


def require_root(cfg: dict, title: str, layout: str) -> Path:
    """The dataset folder from ``dataset.root``; ``layout`` says what it should contain."""
    root = cfg.get("root")
    if not root:
        raise DataError(
            f"{title}: dataset.root is not set. Set it (or pass --root) to the folder that holds {layout}."
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"{title}: dataset root {path} {what}. It should be the folder that holds {layout}.")
    return path


def require_file(path: Path, title: str, what: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"{title}: missing annotation file {path} ({what}). Check dataset.root and the download."
        )
    return path


def _read_text(path: Path, title: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: {title}: the file is not valid UTF-8 text ({exc.reason}).") from None
    except OSError as exc:
        raise DataError(f"{path}: {title}: cannot read the file ({exc.strerror}).") from None


def read_json(path: Path, title: str) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    text = _read_text(path, title)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}:{exc.colno}: {title}: malformed JSON ({exc.msg}). "
            "Re-download or repair the file."
        ) from None


def entry_line(path: Path, index: int) -> int:
    """Line (1-based) where element ``index`` of the top-level JSON array of ``path`` starts (0 if unknown)."""
    try:
        text = path.read_text(encoding="utf-8")
        decoder = json.JSONDecoder()
        pos = text.index("[") + 1
        for i in range(index + 1):
            while text[pos] in " \t\r\n,":
                pos += 1
            if i == index:
                return text.count("\n", 0, pos) + 1
            _, pos = decoder.raw_decode(text, pos)
    except (ValueError, IndexError, OSError):
        return 0
    return 0


class JsonList:
    """A JSON file whose top level is a list; ``bad(i, problem)`` builds the error for entry ``i``."""

    def __init__(self, path: Path, title: str, expect: str):
        self.path = path
        self.title = title
        data = read_json(path, title)
        if not isinstance(data, list):
            raise DataError(
                f"{path}:1: {title}: expected a JSON list of {expect}, found {type(data).__name__}."
            )
        self.items: list = data

    def bad(self, index: int, problem: str) -> DataError:
        line = entry_line(self.path, index)
        where = f"{self.path}:{line}" if line else str(self.path)
        return DataError(f"{where}: {self.title}: entry {index}: {problem}")

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return iter(enumerate(self.items))


def read_lines(path: Path, title: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as (line number, line without the newline)."""
    text = _read_text(path, title)
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def clean_text(value: Any, where_error) -> str:
    """A caption: a non-empty string (surrounding whitespace removed); ``where_error(problem)`` builds the error."""
    if not isinstance(value, str):
        raise where_error(f"a caption must be a string, found {type(value).__name__}.")
    text = value.strip()
    if not text:
        raise where_error("empty caption. Every query needs modification text; fix or remove this entry.")
    return text


# ------------------------------------------------------------------------------------------------ image files
def existing_files(paths: Iterable[str]) -> set[str]:
    """The subset of ``paths`` that exist as files (one directory listing per folder, not one stat per file)."""
    by_dir: dict[str, list[str]] = {}
    for p in paths:
        by_dir.setdefault(os.path.dirname(p), []).append(p)
    found: set[str] = set()
    for folder, items in by_dir.items():
        try:
            with os.scandir(folder or ".") as it:
                names = {e.name for e in it if not e.is_dir()}
        except OSError:
            continue
        found.update(p for p in items if os.path.basename(p) in names)
    return found


class ImageTable:
    """Images referenced by a dataset's annotations, keyed by the dataset's own name for them.

    ``want(key, path, display)`` registers an image; ``check(policy)`` looks for the files and applies the
    missing-images policy; afterwards ``index(key)`` gives the image index (``None`` for a skipped missing image)
    and ``records`` the image table of the :class:`~dwc_core.data.types.CIRDataset` (present images only).
    """

    def __init__(self, title: str, hint: str | Callable[[], str]):
        self.title = title
        self.hint = hint  # how to fix missing images (a callable is only asked when some are missing)
        self._wanted: dict[str, tuple[str | None, str]] = {}
        self._index: dict[str, int] = {}
        self.records: list[ImageRecord] = []
        self.missing: list[str] = []  # keys
        self._checked = False

    def want(self, key: str, path: str | None, display: str = "") -> None:
        if key not in self._wanted:
            self._wanted[key] = (path, display)
        elif display and not self._wanted[key][1]:
            self._wanted[key] = (self._wanted[key][0], display)

    def __contains__(self, key: str) -> bool:
        return key in self._wanted

    def path_of(self, key: str) -> str | None:
        return self._wanted[key][0]

    def check(self, policy: str) -> None:
        paths = [p for p, _ in self._wanted.values() if p is not None]
        present = existing_files(paths)
        self.missing = [k for k, (p, _) in self._wanted.items() if p is not None and p not in present]
        if self.missing and policy != "skip":
            hint = self.hint() if callable(self.hint) else self.hint
            raise DataError(
                missing_message(self.title, [self._wanted[k][0] for k in self.missing], len(paths), hint)
            )
        gone = set(self.missing)
        for key, (path, display) in self._wanted.items():
            if key not in gone:
                self._index[key] = len(self.records)
                self.records.append(ImageRecord(id=key, path=path, display=display))
        self._checked = True

    def index(self, key: str) -> int | None:
        assert self._checked, "call check() first"
        return self._index.get(key)

    def missing_paths(self, limit: int = SHOW_MISSING) -> list[str]:
        return [str(self._wanted[k][0]) for k in self.missing[:limit]]


def missing_message(title: str, paths: list, total: int, hint: str) -> str:
    first = ", ".join(str(p) for p in paths[:SHOW_MISSING])
    more = f" and {len(paths) - SHOW_MISSING} more" if len(paths) > SHOW_MISSING else ""
    return (
        f"{title}: {len(paths)} of {total} images referenced by the annotations are missing: {first}{more}. "
        f"{hint} Or set dataset.missing_images: skip to drop the queries and training triplets that use them "
        "(the number dropped is recorded with the run)."
    )


def split_report(train_samples: int, missing: int, skipped_triplets: int = 0) -> dict:
    """The per-split entry of ``CIRDataset.info['splits']`` read by ``data check``."""
    return {"train_samples": train_samples, "missing_images": missing, "skipped_triplets": skipped_triplets}


def remember_last(sampler):
    """Wrap a ``sampler(epoch, seed)`` so that asking again for the same (epoch, seed) reuses the result (training
    asks for epoch 0 several times while it sets up; a large dataset's epoch takes a second to sample)."""
    memo: dict[tuple[int, int], list] = {}

    def wrapped(epoch: int, seed: int) -> list:
        key = (int(epoch), int(seed))
        if key not in memo:
            memo.clear()
            memo[key] = sampler(*key)
        return list(memo[key])

    return wrapped
