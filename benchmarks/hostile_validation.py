"""Peak memory and wall time of `lensops data validate` on a folder of a thousand hostile files.

The folder (three class folders) holds valid images, mutants of every allowed format from the
fuzzer, decompression bombs, 8,000-page TIFFs, progressive JPEGs with thousands of scans,
images just under the pixel limit that decode to 144 MB each, empty and text files, a FIFO
and links out of the folder. The command runs in a subprocess while the resident memory of
it and of every process below it (the forkserver, the decoding workers) is sampled every
20 ms; the figure is the largest sum seen (shared pages counted in each process, so an upper
bound). With `--baseline REV`, the validator of that git revision runs on the same folder
(without the FIFO, which it would wait on forever) for comparison.

    python benchmarks/hostile_validation.py [--files 1000] [--baseline REV]
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

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_folder(raw: Path, n: int) -> dict[str, int]:
    """`n` files in three class folders; returns how many of each kind."""
    from tests.fuzz import mutants
    from tests.hostile import flat_png, many_page_tiff, many_scan_jpeg
    from tests.imagefactory import encode, noise_image, png_bomb

    heavy = {
        "bomb.png": (png_bomb, max(1, n // 100)),
        "pages.tif": (many_page_tiff, max(1, n // 100)),
        "scans.jpg": (lambda: many_scan_jpeg(copies=100_000), max(1, n // 200)),
        "big.png": (lambda: flat_png(6000, 6000, "RGBA"), max(1, n // 50)),
        "empty.png": (lambda: b"", max(1, n // 100)),
        "notes.jpg": (lambda: b"not a picture\n" * 50, max(1, n // 100)),
    }
    counts: dict[str, int] = {}
    i = 0
    for name, (make, copies) in heavy.items():
        data = make()
        for _ in range(copies):
            folder = raw / ("ant", "bee", "cat")[i % 3]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:05d}_{name}").write_bytes(data)
            i += 1
        counts[name] = copies
    n_valid = (n - i) * 3 // 10
    for k in range(n_valid):
        fmt, ext = (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"))[k % 3]
        (raw / ("ant", "bee", "cat")[k % 3] / f"valid_{k:05d}.{ext}").write_bytes(encode(noise_image(k, (96, 64)), fmt))
    counts["valid"] = n_valid
    rest = n - i - n_valid - 3
    for k, (name, data) in enumerate(mutants(rest, seed=7)):
        ext = {"png": "png", "jpeg": "jpg", "mpo": "jpg", "webp": "webp", "bmp": "bmp", "gif": "gif", "tiff": "tif"}
        (raw / ("ant", "bee", "cat")[k % 3] / f"mutant_{k:05d}.{ext[name.split('-')[0].split('#')[0]]}").write_bytes(
            data
        )
    counts["fuzz mutants"] = rest
    os.mkfifo(raw / "ant" / "pipe.png")
    os.symlink("/etc/hostname", raw / "bee" / "escape.png")
    os.symlink(raw / "cat" / "missing.png", raw / "cat" / "dangling.png")
    counts["FIFO and links"] = 3
    return counts


def measure(command: list[str], cwd: Path, env: dict, timeout: float) -> dict:
    """Run `command`; sample the RSS of it and its descendants; peak of the sum, parent and one worker."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    top = psutil.Process(proc.pid)
    peak_total = peak_parent = peak_child = 0
    while proc.poll() is None and time.perf_counter() - started < timeout:
        try:
            parent = top.memory_info().rss
            children = [c.memory_info().rss for c in top.children(recursive=True)]
        except psutil.Error:
            continue
        peak_parent, peak_total = max(peak_parent, parent), max(peak_total, parent + sum(children))
        peak_child = max([peak_child, *children])
        time.sleep(0.02)
    timed_out = proc.poll() is None
    if timed_out:
        for p in [*top.children(recursive=True), top]:
            p.kill()
    out, err = proc.communicate()
    return {
        "seconds": time.perf_counter() - started,
        "exit": "timed out" if timed_out else proc.returncode,
        "peak_total_mb": peak_total / 2**20,
        "peak_parent_mb": peak_parent / 2**20,
        "peak_child_mb": peak_child / 2**20,
        "tail": (out + err).strip().splitlines()[-3:],
    }


def show(name: str, result: dict) -> None:
    print(
        f"{name}: exit {result['exit']} in {result['seconds']:.1f} s; peak RSS {result['peak_total_mb']:.0f} MB "
        f"(parent {result['peak_parent_mb']:.0f} MB, largest child {result['peak_child_mb']:.0f} MB)"
    )
    for line in result["tail"]:
        print(f"    {line[:150]}")


def baseline(rev: str, work: Path, raw: Path, env: dict, timeout: float) -> dict:
    """The validator of git revision `rev`, on the folder without its FIFO."""
    code = work / "baseline"
    code.mkdir()
    archive = subprocess.run(["git", "archive", rev, "data", "lensops"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    (raw / "ant" / "pipe.png").unlink()
    params = subprocess.run(["git", "show", f"{rev}:params.yaml"], cwd=REPO, capture_output=True, check=True)
    (work / "params.yaml").write_bytes(params.stdout)
    command = [sys.executable, "-m", "lensops.cli", "data", "validate", "--raw", str(raw)]
    return measure(command, work, {**env, "PYTHONPATH": str(code)}, timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--baseline", help="git revision whose validator to compare against")
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lensops-hostile-"))
    try:
        raw = work / "raw"
        counts = build_folder(raw, args.files)
        size = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file() and not p.is_symlink())
        print(f"{sum(counts.values())} files, {size / 2**20:.0f} MB: {counts}")
        shutil.copy(REPO / "params.yaml", work / "params.yaml")
        env = {**os.environ, "GX_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "lensops.cli", "data", "validate", "--raw", str(raw)]
        show("lensops data validate", measure(command, work, env, args.timeout))
        print(f"report written: {(work / 'reports' / 'data_validation.json').is_file()}")
        if args.baseline:
            shutil.rmtree(work / "reports", ignore_errors=True)
            show(f"validator at {args.baseline}", baseline(args.baseline, work, raw, env, args.timeout))
            print(f"report written: {(work / 'reports' / 'data_validation.json').is_file()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
