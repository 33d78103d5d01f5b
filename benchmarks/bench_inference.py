"""Inference benchmarks for the affinity U-Net.

1. Throughput: ONNX Runtime vs torch eager on the same U-Net and tile (output voxels/s, ratio;
   target >= 1.2x on CPU), both with the same number of threads.
2. Peak memory of the `affinity-unet` stage vs volume size: each size runs in a fresh subprocess
   that writes a zarr input volume slab by slab, runs the stage (tile by tile into a zarr
   output), and reports its peak RSS; the peak should stay flat while the volume grows. Twice:
   "plain", and "adapt" (grey values matched to the model's reference and raw at 8 nm resampled
   to the model's 10 nm and the affinities back, all block by block).

    python benchmarks/bench_inference.py [--threads 2] [--repeats 5]

Measured 2026-11-30 on 2 idle cores: torch eager 0.367 Mvox/s, ONNX Runtime 0.796 Mvox/s
(2.17x). Peak RSS of the stage at 0.5 / 4.2 / 16.8 Mvox: plain 154 / 366 / 383 MB; adapt
161 / 390 / 444 MB, and 467 MB at 33.5 Mvox (the output alone would be 6 / 48 / 192 / 384 MB).
Beyond one block the peak still creeps up, by less each time the volume grows: plain +17 MB
for 4x the volume; adapt +54 MB for 4x, then +23 MB for 2x. That is 1-4 MB per Mvox, against
the 12 MB per Mvox the output alone would take. With MALLOC_ARENA_MAX=2 (fewer glibc malloc
arenas for zarr's worker threads) adapt peaks at 347 / 381 MB at 4.2 / 16.8 Mvox (405 / 462 MB
without, same session): part of the creep is arena fragmentation; the rest (+34 MB for 4x) is
not traced.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class _UNetArchitecture(TypedDict):
    """The :class:`~synapse_toolkit.nn.unet.UNetConfig` fields the benchmark sets."""

    num_fmaps: int
    fmap_inc_factor: int
    downsample_factors: tuple[tuple[int, int, int], ...]


SHIPPED: _UNetArchitecture = {
    "num_fmaps": 12,
    "fmap_inc_factor": 3,
    "downsample_factors": ((2, 2, 2), (2, 2, 2)),
}
TILE = (72, 72, 72)


def throughput(threads: int, repeats: int) -> dict:
    import torch

    from synapse_toolkit.nn.export import export_model
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig
    from synapse_toolkit.onnx_runtime import create_session

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = UNet3D(UNetConfig(**SHIPPED)).eval()
    x = np.random.default_rng(0).random((1, 1, *TILE), dtype=np.float32)
    out_vox = int(np.prod(net.output_shape(TILE)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "unet.onnx"
        export_model(net, TILE, path)
        session = create_session(path, providers=["CPUExecutionProvider"], num_threads=threads)
        name = session.get_inputs()[0].name
        xt = torch.from_numpy(x)

        def run_torch() -> None:
            with torch.inference_mode():
                net(xt)

        def run_ort() -> None:
            session.run(None, {name: x})

        times = {}
        for label, fn in [("torch", run_torch), ("onnxruntime", run_ort)]:
            fn()  # warm-up
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            times[label] = float(np.median(ts))
    # interleave a second round to reduce the effect of other load on the shared machine
    return {
        "tile": list(TILE),
        "output_voxels": out_vox,
        "threads": threads,
        "torch_vox_per_s": out_vox / times["torch"],
        "ort_vox_per_s": out_vox / times["onnxruntime"],
        "ratio_ort_over_torch": times["torch"] / times["onnxruntime"],
    }


CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np, zarr
from syntk_neurons.stages import AffinityDetector
from synapse_toolkit.data import Volume
from synapse_toolkit.stages import StageContext
shape = tuple(json.loads(sys.argv[1])); model = sys.argv[2]; tmp = sys.argv[3]; mode = sys.argv[4]
src = zarr.create_array(store=tmp + "/in.zarr", shape=shape, dtype="uint8", chunks=(16, 128, 128))
rng = np.random.default_rng(0)
for z in range(0, shape[0], 16):  # written slab by slab: never the whole volume in memory
    src[z:z + 16] = rng.integers(0, 255, size=(min(16, shape[0] - z), *shape[1:]), dtype=np.uint8)
def hwm_mb():  # peak RSS of this process image (ru_maxrss would include the parent's, on Linux)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
# "plain": raw at the model's voxel size, no intensity reference used; "adapt": grey values
# matched to the model's reference and raw at 8 nm resampled to the model's 10 nm and back
options = {"model_path": model, "model_voxel_size_nm": (10.0, 10.0, 10.0),
           "match_intensity": mode == "adapt"}
voxel_size = (8.0, 8.0, 8.0) if mode == "adapt" else (10.0, 10.0, 10.0)
scratch = Path(tmp) / "scratch"
scratch.mkdir()
stage = AffinityDetector(AffinityDetector.Options(**options), StageContext("detect", scratch))
before = hwm_mb()
t = time.perf_counter()
stage.run({"raw": Volume(src, voxel_size)})
dt = time.perf_counter() - t
print(json.dumps({"shape": list(shape), "mvox": float(np.prod(shape)) / 1e6, "seconds": dt,
                  "peak_rss_mb": hwm_mb(), "rss_before_inference_mb": before, "mode": mode,
                  "output_mb_if_in_memory": 3 * 4 * float(np.prod(shape)) / 2**20}))
"""


def memory_scaling(sizes: list[tuple[int, int, int]], mode: str) -> list[dict]:
    """Peak RSS of the `affinity-unet` stage with a small U-Net (the stage's memory, not the
    model's): ``mode`` "plain" (raw straight into the tiler) or "adapt" (intensity matching and
    resampling from 8 to 10 nm, both block by block)."""
    import torch

    from synapse_toolkit.nn.export import export_model
    from synapse_toolkit.nn.unet import UNet3D, UNetConfig

    torch.manual_seed(0)
    net = UNet3D(UNetConfig(num_fmaps=4, fmap_inc_factor=2, downsample_factors=((2, 2, 2),)))
    tile = net.valid_input_shape((40, 88, 88))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "small.onnx"
        reference = {"quantiles": np.linspace(0, 255, 257).tolist(), "scale": 1 / 255}
        export_model(net.eval(), tile, model, metadata={"intensity_reference": reference})
        for shape in sizes:
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                res = subprocess.run(
                    [sys.executable, "-c", CHILD, json.dumps(list(shape)), str(model), work, mode],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def report_throughput(t: dict) -> None:
    print(
        f"U-Net {SHIPPED}, tile {t['tile']} -> {t['output_voxels']} output voxels, "
        f"{t['threads']} threads"
    )
    print(f"  torch eager : {t['torch_vox_per_s'] / 1e6:.4f} Mvox/s")
    print(f"  onnxruntime : {t['ort_vox_per_s'] / 1e6:.4f} Mvox/s")
    print(f"  ratio ORT/torch: {t['ratio_ort_over_torch']:.2f}x (target >= 1.2x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if not args.skip_throughput:
        report_throughput(throughput(args.threads, args.repeats))
    if not args.skip_memory:
        for mode in ("plain", "adapt"):
            rows = memory_scaling([(32, 128, 128), (64, 256, 256), (128, 256, 512)], mode)
            print(f"affinity-unet stage ({mode}; small U-Net, zarr in/out), peak RSS vs size:")
            for r in rows:
                print(
                    f"  {tuple(r['shape'])!s:18s} {r['mvox']:7.2f} Mvox  {r['seconds']:6.1f} s  "
                    f"peak RSS {r['peak_rss_mb']:7.1f} MB  (output alone would be "
                    f"{r['output_mb_if_in_memory']:.0f} MB in memory)"
                )


if __name__ == "__main__":
    main()
