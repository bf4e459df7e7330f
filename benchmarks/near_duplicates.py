"""Near-duplicate search: lensops' multi-index search against the naive all-pairs scan.

Generates pictures (shapes on a background, 64x64), a tenth of them near copies (resized,
re-encoded, cropped by a few pixels, brightened), hashes them the way validation does
(`data.quality`: grey, then imagehash's pHash), and times the search for pairs within
`--distance` bits: lensops' multi-index search on every hash, and the naive all-pairs scan
(vectorised numpy, in blocks) on every hash too unless `--naive` caps it. Both must find the
same pairs on the set they share.

    python benchmarks/near_duplicates.py [--images 50000] [--distance 4] [--naive 50000]
"""

from __future__ import annotations

import argparse
import io
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance


def picture(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(-size // 4, size, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size // 1.5, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def near_copy(image: Image.Image, seed: int) -> Image.Image:
    kind = seed % 4
    w, h = image.size
    if kind == 0:
        return image.resize((w * 3 // 4, h * 3 // 4))
    if kind == 1:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=60)
        return Image.open(io.BytesIO(buf.getvalue()))
    if kind == 2:
        return image.crop((2, 2, w - 2, h - 2))
    return ImageEnhance.Brightness(image).enhance(1.15)


def hash_range(bounds: tuple[int, int, int]) -> list[str]:
    """pHashes of images start..stop; every `copy_every`-th is a near copy of the one before it."""
    from data.quality import grey_pixels, perceptual_hash

    start, stop, copy_every = bounds
    hashes = []
    for i in range(start, stop):
        image = near_copy(picture(i - 1), i) if i % copy_every == copy_every - 1 else picture(i)
        hashes.append(perceptual_hash(grey_pixels(image)))
    return hashes


def main() -> None:
    from data.decoder_pool import available_cpus
    from data.near_duplicates import hash_array, naive_pairs, near_groups, near_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--distance", type=int, default=4)
    parser.add_argument("--naive", type=int, default=50_000, help="images the naive scan runs on (the first N)")
    args = parser.parse_args()

    cpus = available_cpus()
    step = -(-args.images // (cpus * 4))
    started = time.perf_counter()
    with ProcessPoolExecutor(cpus) as pool:
        chunks = pool.map(hash_range, [(s, min(s + step, args.images), 10) for s in range(0, args.images, step)])
        hashes = hash_array([h for chunk in chunks for h in chunk])
    hashing = time.perf_counter() - started
    print(f"generated and hashed {len(hashes):,} images on {cpus} cores in {hashing:.1f} s")

    started = time.perf_counter()
    pairs = near_pairs(hashes, args.distance)
    search = time.perf_counter() - started
    started = time.perf_counter()
    groups = near_groups([f"{h:016x}" for h in hashes], args.distance)
    grouping = time.perf_counter() - started
    sizes = np.bincount(groups)
    print(f"lensops multi-index search, {len(hashes):,} hashes: {search:.2f} s, {len(pairs):,} pairs within "
          f"{args.distance} bits; groups: {grouping:.2f} s, {(sizes > 1).sum():,} groups of 2+")  # fmt: skip

    n = min(args.naive, len(hashes))
    started = time.perf_counter()
    naive = naive_pairs(hashes[:n], args.distance)
    naive_s = time.perf_counter() - started
    indexed_subset = near_pairs(hashes[:n], args.distance)
    started = time.perf_counter()
    near_pairs(hashes[:n], args.distance)
    indexed_s = time.perf_counter() - started
    same = np.array_equal(naive, indexed_subset)
    print(f"naive all-pairs scan, {n:,} hashes: {naive_s:.2f} s; lensops on the same: {indexed_s:.2f} s; "
          f"ratio {naive_s / indexed_s:.0f}x; same pairs: {'yes' if same else 'NO'}")  # fmt: skip


if __name__ == "__main__":
    main()
