"""Images/s from decoding the original files vs reading the decoded-image cache, on the same images.

Writes photo-like pictures of a realistic size (default 400 of about 400×600, three quarters JPEG and one quarter
PNG, as in the fashion datasets) into a temporary folder, then times

* ``decode``: ``decode_image`` on every file (open, decode, resize shorter side to 224, centre crop), one thread,
  which is what a loader without a cache does for every image of every epoch and evaluation;
* ``cache``: ``ImageCache.get`` of every image (a 224×224×3 uint8 slice of the memory-mapped cache), in a shuffled
  order, after the cache was built once.

Run by hand: ``.venv/bin/python bench/data_loading.py [--count 400] [--size 224]``. Not a test.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from dwc_core.data.loading import ImageCache, decode_image
from dwc_core.data.types import CIRDataset, ImageRecord


def make_photo(rng: np.random.Generator, width: int, height: int):
    """A smooth colour gradient, a few soft shapes and sensor-like noise (compresses and decodes like a photo)."""
    from PIL import Image, ImageDraw, ImageFilter

    corners = rng.integers(30, 226, size=(3, 2, 3), dtype=np.uint8)
    pic = Image.fromarray(corners).resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(pic)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        x1, y1 = x0 + int(rng.integers(40, width // 2)), y0 + int(rng.integers(40, height // 2))
        fill = tuple(int(v) for v in rng.integers(0, 255, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    pixels = np.asarray(pic.filter(ImageFilter.BoxBlur(2)), dtype=np.int16)
    pixels += rng.integers(-8, 9, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_images(folder: Path, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = int(rng.integers(380, 420)), int(rng.integers(580, 620))
        pic = make_photo(rng, width, height)
        if i % 4 == 3:
            path = folder / f"img_{i:04d}.png"
            pic.save(path, compress_level=1)  # fast to write; decoding cost is about the same
        else:
            path = folder / f"img_{i:04d}.jpg"
            pic.save(path, quality=90)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400, help="number of images")
    parser.add_argument("--size", type=int, default=224, help="cache / decode side")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the cache (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dwc-bench-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        t0 = time.perf_counter()
        paths = write_images(folder, args.count, args.seed)
        mb = sum(Path(p).stat().st_size for p in paths) / 1e6
        print(
            f"wrote {len(paths)} images (~400x600, {mb:.1f} MB, jpg+png) in {time.perf_counter() - t0:.1f}s"
        )
        ds = CIRDataset(
            name="bench",
            images=[ImageRecord(id=Path(p).name, path=p) for p in paths],
            train=[],
            eval_sets={},
            num_labels=0,
        )

        t0 = time.perf_counter()
        for p in paths:
            decode_image(p, args.size)
        decode_s = time.perf_counter() - t0
        decode_rate = len(paths) / decode_s

        cache = ImageCache(ds, args.size, Path(tmp) / "cache")
        t0 = time.perf_counter()
        cache.ensure(threads=2)
        build_s = time.perf_counter() - t0

        order = list(range(len(paths)))
        random.Random(args.seed).shuffle(order)
        best = float("inf")
        checksum = 0
        for _ in range(max(1, args.repeat)):
            cache._array = None  # reopen the memory map, as a fresh worker would
            t0 = time.perf_counter()
            for i in order:
                checksum += int(cache.get(i)[0, 0, 0])
            best = min(best, time.perf_counter() - t0)
        cache_rate = len(paths) / best

    print(f"decode originals : {decode_rate:9.1f} images/s  ({decode_s:.2f}s, 1 thread, {args.size}px)")
    print(f"cache build      : {len(paths) / build_s:9.1f} images/s  ({build_s:.2f}s, once, 2 threads)")
    print(f"read from cache  : {cache_rate:9.1f} images/s  ({best * 1000:.1f} ms per pass, shuffled)")
    print(f"ratio            : {cache_rate / decode_rate:9.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
