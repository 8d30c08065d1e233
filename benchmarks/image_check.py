"""Image check before a run (`training.image_check`): one thread vs the thread pool, and the cached second run.

Writes radiograph-sized JPEGs (default 64 files of 2500x3000 px, as in MIMIC-CXR-JPG) to a temporary folder, then
times `check_images` three ways with a fresh cache each for the first two: one worker thread, the default pool, and
the default pool again over unchanged files (everything from the size/mtime cache).

Usage:

```bash
.venv/bin/python benchmarks/image_check.py [--num-images 64] [--width 2500] [--height 3000]
```
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--width", type=int, default=2500)
    p.add_argument("--height", type=int, default=3000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, size=(a.height // 8, a.width // 8), dtype=np.uint8)
        paths = []
        for i in range(a.num_images):
            image = Image.fromarray(np.roll(base, i, axis=1)).resize((a.width, a.height), Image.BILINEAR)
            path = tmp / "images" / f"{i:05d}.jpg"
            path.parent.mkdir(exist_ok=True)
            image.save(path, quality=90)
            paths.append(str(path))
        from training.data.image_check import check_images

        results = {"images": a.num_images, "size": f"{a.width}x{a.height}",
                   "mean_file_kb": round(sum(os.path.getsize(p) for p in paths) / len(paths) / 1024, 1),
                   "cpu_count": os.cpu_count()}
        for name, workers, cache in (("one_thread", 1, "c1"), ("thread_pool", None, "c2"), ("cached_rerun", None, "c2")):
            os.environ["RRG_CACHE"] = str(tmp / cache)
            start = time.perf_counter()
            problems = check_images(paths, workers=workers)
            results[f"{name}_s"] = round(time.perf_counter() - start, 3)
            assert not problems, problems
        results["pool_speedup"] = round(results["one_thread_s"] / results["thread_pool_s"], 2)
        results["cached_speedup"] = round(results["thread_pool_s"] / results["cached_rerun_s"], 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
