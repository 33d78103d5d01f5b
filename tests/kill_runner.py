"""Run the syntk CLI and SIGKILL the process at a chosen point (for kill-and-resume tests).

SYNTK_KILL_AT is one of:
  after-detector      after the affinity detector computed its volume, before it is stored
  in-agglomeration    inside waterz, after the sweep, before the chosen segmentation is copied
  in-writer           inside the CREMI writer, before its temporary file is renamed into place
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
    if point == "after-detector":
        from syntk_neurons.stages import AffinityDetector

        run = AffinityDetector.run

        def killed(self, inputs):  # type: ignore[no-untyped-def]
            run(self, inputs)
            _die()

        AffinityDetector.run = killed  # type: ignore[method-assign]
    elif point == "in-agglomeration":
        import synapse_toolkit.io.zarr_io as zarr_io

        zarr_io.copy_slab = lambda *a, **k: _die()  # type: ignore[assignment]
    elif point == "in-writer":
        import synapse_toolkit.io.cremi as cremi

        replace = os.replace

        def killing_replace(src, dst, *a, **k):  # type: ignore[no-untyped-def]
            if str(dst).endswith("prediction.hdf"):
                _die()
            return replace(src, dst, *a, **k)

        cremi.os.replace = killing_replace  # type: ignore[attr-defined]
    else:
        raise SystemExit(f"unknown SYNTK_KILL_AT {point!r}")


if __name__ == "__main__":
    if os.environ.get("SYNTK_KILL_AT"):
        _install(os.environ["SYNTK_KILL_AT"])
    from synapse_toolkit.cli.main import main

    sys.argv = ["syntk", *sys.argv[1:]]
    main()
