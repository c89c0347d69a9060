"""Image previews for browsing per-query results in a terminal: pixels of a run's images, as half-block cells.

:class:`RunImages` finds the pixels of a run's images by their dataset ids: from the decoded-image cache when
training built it (``<cache_dir>/<key>/images_<size>.u8``), else rendered (the synthetic set draws its scenes)
or decoded from the dataset's files. :func:`half_blocks` turns an H×W×3 image into rows of terminal cells, each
cell the "▀" character with the upper pixel as its foreground colour and the lower one as its background, so one
text row shows two pixel rows and square pixels stay square. Torch-free; the terminal styling is left to the view
(CLI, TUI), which gets plain RGB tuples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dwc_core.errors import DwcError

HALF_BLOCK = "▀"
RGB = tuple[int, int, int]


class ImagesUnavailable(DwcError):
    """The run's images are not on this machine (the message says why and where they were looked for)."""


def half_blocks(pixels: np.ndarray, width: int) -> list[list[tuple[RGB, RGB]]]:
    """Rows of (upper, lower) RGB pairs, ``width`` cells wide: the image is resized (box filter) to ``width``
    pixels across and its height in proportion, rounded up to an even number of pixel rows; an image already
    that size is used as it is. Each pair is one terminal cell drawn with :data:`HALF_BLOCK`."""
    from PIL import Image

    if width < 1:
        raise ValueError(f"width {width}: must be at least 1 cell")
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3].astype(np.uint8)
    h, w = arr.shape[:2]
    rows = max(2, round(width * h / w))
    rows += rows % 2
    if (w, h) != (width, rows):
        arr = np.asarray(Image.fromarray(arr).resize((width, rows), Image.Resampling.BOX))
    out = []
    for y in range(0, rows, 2):
        top, bottom = arr[y], arr[y + 1]
        out.append([(tuple(map(int, top[x])), tuple(map(int, bottom[x]))) for x in range(width)])
    return out


class RunImages:
    """The pixels of one run's images, by dataset image id. Raises :class:`ImagesUnavailable` when its dataset
    does not load here (annotation files or root not on this machine)."""

    def __init__(self, run: dict):
        config = run.get("config") or {}
        dataset = dict(config.get("dataset") or {})
        if not dataset.get("name"):
            raise ImagesUnavailable(f"run {run.get('id')} records no dataset, so it has no images to show.")
        project = Path(run.get("run_dir") or "runs/x").parent.parent
        cache = Path(dataset.get("cache_dir") or project / "runs" / ".cache")
        if not cache.is_absolute():
            cache = project / cache
        try:
            from dwc_core.data import load_dataset
            from dwc_core.data.loading import ImageCache

            self.ds = load_dataset(dataset, cache)
        except Exception as exc:  # noqa: BLE001 — any loader failure means: not available here
            where = f" (dataset.root {dataset['root']})" if dataset.get("root") else ""
            msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            raise ImagesUnavailable(
                f"the images of run {run.get('id')}'s dataset {dataset['name']}{where} are not available on this "
                f"machine: {msg}"
            ) from None
        self.size = int(dataset.get("image_size") or 64)
        self.index = {img.id: i for i, img in enumerate(self.ds.images)}
        self._cache = ImageCache(self.ds, self.size, cache)
        self._array = None
        if self._cache.is_built():  # never build it here: that is training's job
            self._array = np.memmap(self._cache.path, dtype=np.uint8, mode="r",
                                    shape=(self._cache.count, self.size, self.size, 3))  # fmt: skip
        self.source = "decoded-image cache" if self._array is not None else "dataset files"

    def pixels(self, image_id: str) -> np.ndarray | None:
        """H×W×3 uint8 pixels of the image, or None when this id is unknown or its file is missing/unreadable."""
        i = self.index.get(str(image_id))
        if i is None:
            return None
        if self._array is not None:
            return np.array(self._array[i])
        rec = self.ds.images[i]
        try:
            if rec.path is None and self.ds.render is not None:
                return np.asarray(self.ds.render(i), dtype=np.uint8)
            if rec.path is None:
                return None
            from dwc_core.data.loading import decode_image

            return decode_image(rec.path, self.size)
        except DwcError:
            return None
