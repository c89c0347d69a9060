"""From image indices to pixels: the decoded-image cache and the torch datasets/loaders built on it.

The cache holds every image of a dataset decoded once, resized (shorter side → ``size``, bicubic) and centre-
cropped to ``size``×``size``, as one uint8 array file (N, size, size, 3) read through ``numpy.memmap``. It is
built once per dataset and image size (atomically: temp file + rename) and shared by training and evaluation,
so later epochs and evaluations never decode the originals again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dwc_core.data.types import CIRDataset, Triplet
from dwc_core.errors import DataError


def decode_image(path: str, size: int) -> np.ndarray:
    """Decode an image file → RGB, shorter side resized to ``size`` (bicubic), centre crop ``size``×``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # lets JPEG decode at a reduced scale when much larger
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing.") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or corrupt image file ({exc}).") from None


def cache_key(ds: CIRDataset) -> str:
    if ds.cache_key:
        return ds.cache_key
    digest = hashlib.sha1()
    digest.update(ds.name.encode())
    for rec in ds.images:
        digest.update(b"\0" + (rec.path or rec.id).encode())
    return f"{ds.name}-{digest.hexdigest()[:12]}"


class ImageCache:
    """The decoded-image cache of one dataset at one image size."""

    def __init__(self, ds: CIRDataset, size: int, cache_root: str | os.PathLike):
        self.size = int(size)
        self.count = len(ds.images)
        self.folder = Path(cache_root) / cache_key(ds)
        self.path = self.folder / f"images_{self.size}.u8"
        self.meta_path = self.folder / f"images_{self.size}.json"
        self._ds = ds
        self._array: np.ndarray | None = None

    def is_built(self) -> bool:
        if not (self.path.is_file() and self.meta_path.is_file()):
            return False
        meta = json.loads(self.meta_path.read_text())
        return meta.get("count") == self.count and meta.get("size") == self.size

    def ensure(self, threads: int = 0, progress: Callable[[int, int], None] | None = None) -> None:
        """Build the cache if it does not exist yet."""
        if self.is_built():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        shape = (self.count, self.size, self.size, 3)
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
        ds, size = self._ds, self.size
        lock = threading.Lock()
        done = [0]

        def one(i: int) -> None:
            rec = ds.images[i]
            if ds.render is not None and rec.path is None:
                pixels = ds.render(i)
                if pixels.shape[:2] != (size, size):
                    from PIL import Image

                    pixels = np.asarray(
                        Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
                    )
            else:
                pixels = decode_image(rec.path, size)
            out[i] = pixels
            if progress is not None:
                with lock:
                    done[0] += 1
                    if done[0] % 256 == 0 or done[0] == self.count:
                        progress(done[0], self.count)

        workers = threads or min(8, (os.cpu_count() or 2) * 2)
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(one, range(self.count)))
            out.flush()
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.meta_path.write_text(json.dumps({"count": self.count, "size": self.size}))

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            if not self.is_built():
                self.ensure()
            self._array = np.memmap(
                self.path, dtype=np.uint8, mode="r", shape=(self.count, self.size, self.size, 3)
            )
        return self._array

    def __getstate__(self) -> dict:  # workers reopen the memmap themselves
        state = dict(self.__dict__)
        state["_array"] = None
        state["_ds"] = None
        return state

    def get(self, indices) -> np.ndarray:
        return np.array(self.array[indices])  # a writable copy (the memmap is read-only)


# ----------------------------------------------------------------------------------------------- torch datasets
def _torch():
    import torch

    return torch


class TripletData:
    """torch Dataset of training triplets: (ref uint8 CHW, target uint8 CHW, text, label)."""

    def __init__(self, triplets: list[Triplet], cache: ImageCache, augment: str = "none"):
        self.triplets = triplets
        self.cache = cache
        self.augment = augment

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, i: int):
        torch = _torch()
        t = self.triplets[i]
        ref = torch.from_numpy(self.cache.get(t.ref)).permute(2, 0, 1)
        tgt = torch.from_numpy(self.cache.get(t.target)).permute(2, 0, 1)
        if self.augment == "hflip":
            if torch.rand(()) < 0.5:
                ref = ref.flip(-1)
            if torch.rand(()) < 0.5:
                tgt = tgt.flip(-1)
        return ref.contiguous(), tgt.contiguous(), t.text, t.label


def collate_triplets(items):
    torch = _torch()
    refs, tgts, texts, labels = zip(*items, strict=True)
    return torch.stack(refs), torch.stack(tgts), list(texts), torch.tensor(labels, dtype=torch.long)


class IndexedImages:
    """torch Dataset of cached images by image index (for encoding galleries and queries)."""

    def __init__(self, indices: list[int], cache: ImageCache):
        self.indices = list(indices)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        torch = _torch()
        return torch.from_numpy(self.cache.get(self.indices[i])).permute(2, 0, 1).contiguous()


def loader_kwargs(workers: int, pin: bool) -> dict:
    kw: dict = {"num_workers": workers, "pin_memory": pin}
    if workers > 0:
        kw["persistent_workers"] = False
        kw["prefetch_factor"] = 4
    return kw
