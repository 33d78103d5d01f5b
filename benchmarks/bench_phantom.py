"""Generate a large EM phantom block by block (zarr) and report time and peak memory.

    python benchmarks/bench_phantom.py                      # 100 x 3200 x 3200 = 1.02 Gvoxel
    python benchmarks/bench_phantom.py --shape 50 1600 1600 --keep out.zarr

Prints one JSON line: voxels, geometry (global set-up) seconds, rendering seconds and throughput
(Mvoxel/s), peak resident memory (ru_maxrss, MB) after set-up and at the end. The volume is
written to a temporary folder (deleted unless ``--keep``). ``--max-blocks N`` renders only the
first N blocks and extrapolates the rendering time to the whole volume (reported as such).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    from synapse_toolkit.blockwise import count_blocks
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.params import EMPhantomParams
    from synapse_toolkit.phantom.store import write_phantom

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[100, 3200, 3200])
    ap.add_argument("--block", type=int, nargs=3, default=[16, 512, 512])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-blocks", type=int, default=0, help="render only N blocks, extrapolate")
    ap.add_argument("--keep", type=Path, default=None, help="keep the zarr store here")
    args = ap.parse_args()
    shape = tuple(args.shape)
    block = tuple(args.block)
    voxels = int(np.prod(shape))
    t0 = time.perf_counter()
    ph = EMPhantom(EMPhantomParams(shape=shape, seed=args.seed))
    t_setup = time.perf_counter() - t0
    rss_setup = peak_rss_mb()
    result = {
        "shape": list(shape), "block": list(block), "voxels": voxels,
        "neurons_grown": int(ph.field.n_neurons), "core_points": len(ph.field.points),
        "synapses": len(ph.synapses), "vesicles": len(ph.scene.vesicles.diameters),
        "setup_s": round(t_setup, 1), "peak_rss_after_setup_mb": round(rss_setup, 1),
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_phantom."))
    out = args.keep or tmp / "phantom.zarr"
    n_blocks = count_blocks(shape, block)
    t1 = time.perf_counter()
    if args.max_blocks:
        done = 0
        rendered = 0
        for _w, arrays in ph.iter_blocks(block):
            rendered += arrays["raw"].size
            done += 1
            if done >= args.max_blocks:
                break
        t_render = time.perf_counter() - t1
        result.update({"rendered_blocks": done, "of_blocks": n_blocks,
                       "rendered_voxels": rendered, "render_s": round(t_render, 1),
                       "extrapolated_render_s": round(t_render * voxels / rendered, 0),
                       "mvoxel_per_s": round(rendered / t_render / 1e6, 3)})  # fmt: skip
    else:
        last = [time.perf_counter()]
        count = [0]

        def progress(w: object) -> None:
            count[0] += 1
            if count[0] % 10 == 0 or count[0] == n_blocks:
                now = time.perf_counter()
                print(f"  block {count[0]}/{n_blocks}  {now - t1:.0f} s  "
                      f"rss {peak_rss_mb():.0f} MB", flush=True)  # fmt: skip
                last[0] = now

        write_phantom(ph, out, block_shape=block, progress=progress, overwrite=True)
        t_render = time.perf_counter() - t1
        size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
        result.update({"render_s": round(t_render, 1), "blocks": n_blocks,
                       "mvoxel_per_s": round(voxels / t_render / 1e6, 3),
                       "store_mb": round(size / 2**20, 1)})  # fmt: skip
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
