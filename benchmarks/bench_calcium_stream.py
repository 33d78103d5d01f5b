"""Peak memory of the calcium loader's streaming projections on a large movie.

Writes a phantom movie as one multi-page TIFF (default 3,000 frames of 512x512 uint16 = 1.57 GB:
a 100-frame calcium phantom with 330 cells, cycled), then measures, each in a fresh process,
the peak resident memory (``ru_maxrss``) of

1. ``imports``: Python with numpy, tifffile and syntk_calcium imported (the floor);
2. ``projection``: the same plus the mean, std and max projections (``summary_images``);
3. ``pipeline``: ``syntk pipeline run examples/neurofinder.toml`` on the movie (loader, CNN,
   regions, baseline, overlay: the whole example),

and reports each as a fraction of the movie's size (goal: <= 25%).

    python benchmarks/bench_calcium_stream.py [--frames 3000] [--size 512] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Peak RSS = VmHWM of the child's own address space (ru_maxrss would carry the parent's
# high-water mark over fork + exec).
_CHILD = """
import sys, time, json
import numpy as np, tifffile
from syntk_calcium.io import open_source, summary_images
t = time.time()
if sys.argv[1] == "projection":
    out = summary_images(open_source(sys.argv[2]), ["mean", "std", "max"], chunk=16)
    assert out.shape[0] == 3
elif sys.argv[1] == "pipeline":
    from synapse_toolkit.cli.main import main
    sys.argv = ["syntk", *sys.argv[2:]]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(json.dumps({"seconds": time.time() - t, "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def write_movie(path: Path, frames: int, size: int, seed: int = 0) -> int:
    """A ``frames`` x ``size`` x ``size`` uint16 TIFF written page by page; returns its bytes."""
    import tifffile

    from synapse_toolkit.phantom.calcium import generate_calcium

    cells = int(330 * (size / 512) ** 2)
    ph = generate_calcium(seed=seed, frames=min(frames, 100), shape=(size, size), n_cells=cells)
    base = ph.movie

    def pages() -> Iterator[np.ndarray]:
        for k in range(frames):
            yield base[k % base.shape[0]]

    tifffile.imwrite(path, pages(), shape=(frames, size, size), dtype=np.uint16)
    return frames * size * size * 2


def child_peak(mode: str, *args: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _CHILD, mode, *args], check=True,
                         capture_output=True, text=True, env=env)  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def pipeline_peak(movie: Path, run_dir: Path, model_path: str | None) -> dict[str, float]:
    return child_peak(
        "pipeline", "pipeline", "run", str(REPO / "examples" / "neurofinder.toml"), "-q",
        "--set", f"input.path='{movie}'", "--set", f"output.dir='{run_dir}'",
        *(["--set", f"stages.detect.options.model_path='{model_path}'"] if model_path else []),
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--keep", default=None, help="write the movie here and keep it")
    ap.add_argument("--model-path", default=None, help="ONNX file instead of the shipped model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        movie = folder / f"movie_{args.frames}x{args.size}x{args.size}.tif"
        t = time.time()
        nbytes = write_movie(movie, args.frames, args.size)
        print(f"movie {movie.name}: {nbytes / 2**20:.0f} MiB written in {time.time() - t:.0f} s")
        rows = {"pipeline": pipeline_peak(movie, folder / "run", args.model_path)}
        for mode in ("imports", "projection"):
            rows[mode] = child_peak(mode, str(movie))
        movie_mb = nbytes / 2**20
        print(f"{'measurement':<12} {'peak RSS MiB':>12} {'% of movie':>10} {'seconds':>8}")
        for mode in ("imports", "projection", "pipeline"):
            r = rows[mode]
            pct = 100 * r["peak_rss_mb"] / movie_mb
            print(f"{mode:<12} {r['peak_rss_mb']:>12.0f} {pct:>9.1f}% {r['seconds']:>8.1f}")
        print(json.dumps({"movie_mib": movie_mb, **rows}))


if __name__ == "__main__":
    main()
