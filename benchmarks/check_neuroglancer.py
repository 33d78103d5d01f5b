"""Open a run's neuroglancer export in a real neuroglancer client, offline, and report what it read.

Needs the ``neuroglancer`` Python package (it bundles the built web client) and Chromium
(Debian's ``chromium``). Steps:

1. ``syntk export neuroglancer``'s state for RUN_DIR (with ``--levels`` pyramid levels), checked by
   the package's own state model (``neuroglancer.ViewerState``: every layer type recognised);
2. the run directory served by ``synapse_toolkit.neuroglancer_export.serve`` (CORS open, every
   request logged), the bundled client by the package's own local server (``neuroglancer.Viewer``
   holding the state);
3. headless Chromium (software WebGL) opens the client and takes a screenshot;
4. prints which files the client fetched per layer: each layer's ``zarr.json`` (the OME-Zarr
   metadata parsed), and chunk files of which pyramid levels (data decoded and drawn).

    python benchmarks/check_neuroglancer.py RUN_DIR [--levels 3] [--png shot.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from synapse_toolkit.neuroglancer_export import neuroglancer_state, serve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--png", type=Path, default=None, help="screenshot (default: RUN/ng.png)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--wait-s", type=float, default=300.0, help="how long to wait for the client")
    args = ap.parse_args()
    import neuroglancer

    requests: list[str] = []
    data = serve(args.run_dir, port=0, on_request=requests.append)
    thread = threading.Thread(target=data.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{data.server_address[1]}"
        state = neuroglancer_state(args.run_dir, base, levels=args.levels)
        parsed = neuroglancer.ViewerState(state)  # raises on a state neuroglancer cannot read
        kinds = {layer.name: type(layer.layer).__name__ for layer in parsed.layers}
        # the package's own server hands out the bundled client (it needs its /v/<token>/ URL)
        neuroglancer.set_server_bind_address("127.0.0.1")
        viewer = neuroglancer.Viewer()
        viewer.set_state(parsed)
        png = (args.png or args.run_dir / "ng.png").resolve()
        stats: list[Any] = []
        shot: list[Any] = []
        with tempfile.TemporaryDirectory() as profile:
            cmd = ["chromium", "--headless", "--no-sandbox", "--hide-scrollbars",
                   "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                   f"--user-data-dir={profile}", "--remote-debugging-port=0",
                   "--enable-logging=stderr", "--window-size=1400,1000",
                   viewer.get_viewer_url()]  # fmt: skip
            log = open(Path(profile) / "chromium.log", "w+")  # noqa: SIM115
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, text=True)
            try:
                # neuroglancer answers a screenshot request once every visible chunk is drawn
                worker = threading.Thread(target=lambda: shot.append(
                    viewer.screenshot(size=[1200, 900], statistics_callback=stats.append)),
                    daemon=True)  # fmt: skip
                worker.start()
                worker.join(args.wait_s)
            finally:
                proc.terminate()
                proc.wait(30)
            log.seek(0)
            errors = [ln.split("CONSOLE", 1)[1][:300] for ln in log.read().splitlines()
                      if "CONSOLE" in ln and "rror" in ln]  # fmt: skip
            log.close()
        if shot:
            png.write_bytes(shot[0].screenshot.image)
        neuroglancer.stop()
    finally:
        data.shutdown()
        data.server_close()
    per_layer: dict[str, dict[str, Any]] = defaultdict(lambda: {"metadata": False, "chunks": {}})
    for path in requests:
        if ".ome.zarr/" not in path:
            continue
        view, rest = path.split(".ome.zarr/", 1)
        name = view.removeprefix("/artifacts/").replace("/", ".")
        if rest == "zarr.json":
            per_layer[name]["metadata"] = True
        elif "/c/" in rest:
            level = rest.split("/", 1)[0]
            per_layer[name]["chunks"][level] = per_layer[name]["chunks"].get(level, 0) + 1
    out = {"layers (neuroglancer.ViewerState)": kinds, "requests": len(requests),
           "fetched per layer": dict(per_layer), "screenshot": str(png) if shot else None,
           "last load statistics": stats[-1].to_json() if stats else None,
           "console errors": errors}  # fmt: skip
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
