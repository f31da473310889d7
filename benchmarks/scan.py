"""Folder scan of phone-sized photos: images/s and peak memory of `scan_folder`.

    .venv/bin/python benchmarks/scan.py [--photos 2000] [--image-size 64] [--width 4000]
        [--height 3000] [--classes 10] [--dir DIR] [--lazy] [--workers N]

Writes `--photos` JPEGs (quality 90, `--width` x `--height`, smooth noise at three scales, so
a 12-MP one is ~3.5 MB, like a phone photo) into DIR/<class>/ for `--classes`
classes, with `--workers` processes; DIR (default: a folder in the system temp dir named by the
photo count and size) is reused when a previous run completed it, since writing 2000 12-MP
JPEGs takes minutes. The scan (`scan_folder`, `in_memory` unless `--lazy`) then runs in a fresh
Python process, so its peak resident memory (`ru_maxrss`) counts the scan and the imports only,
not the generation; the imports' own peak is printed beside it. Prints one line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

DONE = ".complete"  # written last: DIR holds every photo of these parameters


def photo(width: int, height: int, seed: int) -> Image.Image:
    """RGB `width` x `height`: noise upsampled from 1/32 and 1/4 scale, plus grey grain."""
    rng = np.random.default_rng(seed)

    def layer(div: int) -> Image.Image:
        small = rng.integers(0, 256, (max(1, height // div), max(1, width // div), 3), np.uint8)
        return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)

    pixels = np.asarray(Image.blend(layer(32), layer(4), 0.25), np.int16)
    pixels = pixels + rng.integers(-8, 9, (height, width, 1), np.int16)  # sensor-like grain
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_photo(args: tuple[Path, int, int, int]) -> None:
    path, width, height, seed = args
    photo(width, height, seed).save(path, quality=90)


def generate(root: Path, photos: int, classes: int, width: int, height: int, workers: int):
    """DIR/<class>/<i>.jpg, skipped when a previous call completed the same set."""
    spec = {"photos": photos, "classes": classes, "width": width, "height": height}
    done = root / DONE
    if done.is_file() and json.loads(done.read_text()) == spec:
        print(f"reusing {photos} photos in {root}")
        return
    jobs = []
    for i in range(photos):
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:05d}.jpg", width, height, i))
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        for k, _ in enumerate(pool.map(write_photo, jobs, chunksize=4), 1):
            if k % 100 == 0 or k == photos:
                print(f"  wrote {k}/{photos} photos ({time.perf_counter() - start:.0f} s)")
    done.write_text(json.dumps(spec))


def scan(root: Path, image_size: int, in_memory: bool) -> dict:
    """The measured part (run in its own process): one `scan_folder` call."""
    from uniframework.data.datasets import scan_folder

    imports_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    images, targets, _ = scan_folder(root, None, "skip", in_memory, image_size)
    seconds = time.perf_counter() - start
    kept = sum(x.numel() for x in images if hasattr(x, "numel"))
    return {
        "images": len(targets),
        "seconds": seconds,
        "kept_mb": kept / 2**20,
        "imports_peak_mb": imports_kb / 1024,  # Linux: ru_maxrss is in kB
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--width", type=int, default=4000)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dir", type=Path, default=None, help="where the photos are (re)used")
    p.add_argument("--lazy", action="store_true", help="scan with in_memory off (keep paths)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="for generation")
    p.add_argument("--scan-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    root = a.dir or Path(tempfile.gettempdir()) / f"uf-scan-{a.photos}x{a.width}x{a.height}"
    if a.scan_only:  # the child process
        print(json.dumps(scan(root, a.image_size, not a.lazy)))
        return
    generate(root, a.photos, a.classes, a.width, a.height, a.workers)
    child = [sys.executable, __file__, "--scan-only", "--dir", str(root)]
    child += ["--image-size", str(a.image_size)] + (["--lazy"] if a.lazy else [])
    out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(
        f"scan of {r['images']} photos {a.width}x{a.height} at image_size {a.image_size} "
        f"(in_memory={not a.lazy}): {r['images'] / r['seconds']:.1f} images/s "
        f"({r['seconds']:.1f} s), peak RSS {r['peak_rss_mb']:.0f} MB "
        f"(imports alone {r['imports_peak_mb']:.0f} MB), kept pixels {r['kept_mb']:.1f} MB; "
        f"{cpu_name()}, {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
