"""Validation throughput: `lensops data validate` against a bare Pillow decode loop on one core.

The bare loop is the least any validator must do: open each file and decode it in full. The
validator does more per file (sha256, header checks, all frames, the quality measures and
pHash, each file in an isolated worker process, the GE suite, near-duplicate groups, the
report and charts) and spreads the decoding over all cores. Both run on the same generated images in one run.

    python benchmarks/validate_throughput.py [--images 3000] [--size 256] [--format JPEG]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_images(raw: Path, n: int, size: int, fmt: str, classes: int = 10) -> None:
    """Photo-like images (smooth gradients plus noise) so that decoding costs what real files cost."""
    rng = np.random.default_rng(0)
    ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[fmt]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        folder = raw / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 255, 3)
        base = np.stack([a * xx, b * yy, c * (1 - xx) * yy], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:05d}{ext}", format=fmt, quality=90)


def bare_loop(raw: Path) -> int:
    n = 0
    for path in sorted(raw.rglob("*")):
        if path.is_file():
            with Image.open(path) as im:
                im.load()
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--format", default="JPEG", choices=["JPEG", "PNG", "WEBP"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lensops-bench-"))
    try:
        raw = work / "raw"
        started = time.perf_counter()
        make_images(raw, args.images, args.size, args.format)
        took = time.perf_counter() - started
        print(f"generated {args.images} {args.size}x{args.size} {args.format} images in {took:.1f}s")
        shutil.copy(REPO / "params.yaml", work / "params.yaml")

        # Warm the page cache for both contenders alike.
        for p in raw.rglob("*"):
            if p.is_file():
                p.read_bytes()

        started = time.perf_counter()
        n = bare_loop(raw)
        bare = n / (time.perf_counter() - started)

        lensops = Path(sys.executable).parent / "lensops"
        env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
        started = time.perf_counter()
        done = subprocess.run(
            [str(lensops), "data", "validate", "--raw", str(raw)], cwd=work, env=env, capture_output=True
        )
        if done.returncode not in (0, 1):  # 1: the generated images fail a check, which is still a full run
            raise SystemExit(f"lensops data validate failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")
        whole_s = time.perf_counter() - started
        whole = args.images / whole_s

        from data.manifest import available_cpus, build_manifest

        started = time.perf_counter()
        build_manifest(raw, max_pixels=40_000_000, progress=False)
        inspect_s = time.perf_counter() - started
        inspect = args.images / inspect_s

        print(f"cores available to the validator: {available_cpus()}")
        print(f"bare Pillow open+decode loop, 1 core     : {bare:8.0f} images/s")
        print(f"lensops data validate (whole command)    : {whole:8.0f} images/s   ratio {whole / bare:.2f}")
        print(f"  manifest inspection (decode, sha256)   : {inspect:8.0f} images/s   ratio {inspect / bare:.2f}")
        fixed = whole_s - inspect_s
        print(f"  fixed cost (start-up, imports, GE suite, report): {fixed:.1f}s")
        if inspect > bare:
            # Past this many images the whole command overtakes the bare loop.
            print(f"  break-even folder size: {fixed / (1 / bare - 1 / inspect):,.0f} images")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
