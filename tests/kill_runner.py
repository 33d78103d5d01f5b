"""Run the syntk CLI and SIGKILL the process at a chosen point (for kill-and-resume tests).

SYNTK_KILL_AT is one of:
  after-detector      after the affinity detector computed its volume, before it is stored
  in-agglomeration    inside waterz, after the sweep, before the chosen segmentation is copied
  in-writer           inside the CREMI writer, before its temporary file is renamed into place
  after-blocks:PHASE:K  after K blocks of the blockwise phase PHASE finished (run_blocks name)

SYNTK_KILL_WORKER_AT = "MODULE:FUNCTION:BLOCK_ID:FLAG_FILE" SIGKILLs the spawned worker process
that starts block BLOCK_ID in MODULE.FUNCTION (a block process function), once (the flag file
records it). Spawned workers import this script as ``__mp_main__``, which installs the hook.
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
    elif point.startswith("after-blocks:"):
        import synapse_toolkit.blocktasks as blocktasks

        _, phase, k = point.split(":")
        real = blocktasks.run_blocks

        def counting(tasks, process, **kw):  # type: ignore[no-untyped-def]
            if kw.get("name") != phase:
                return real(tasks, process, **kw)
            inner = kw.get("on_block")
            done = [0]

            def on_block(task, skipped):  # type: ignore[no-untyped-def]
                if inner is not None:
                    inner(task, skipped)
                if not skipped:
                    done[0] += 1
                    if done[0] == int(k):
                        _die()

            return real(tasks, process, **{**kw, "on_block": on_block})

        blocktasks.run_blocks = counting  # type: ignore[assignment]
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


def _install_worker_kill(spec: str) -> None:
    import importlib

    module, function, block_id, flag = spec.split(":")
    mod = importlib.import_module(module)
    real = getattr(mod, function)

    def dying(*args):  # type: ignore[no-untyped-def]
        task = args[-1]
        if task.block_id == int(block_id) and not os.path.exists(flag):
            open(flag, "w").close()
            _die()
        return real(*args)

    setattr(mod, function, dying)


if __name__ == "__mp_main__" and os.environ.get("SYNTK_KILL_WORKER_AT"):
    _install_worker_kill(os.environ["SYNTK_KILL_WORKER_AT"])

if __name__ == "__main__":
    if os.environ.get("SYNTK_KILL_AT"):
        _install(os.environ["SYNTK_KILL_AT"])
    from synapse_toolkit.cli.main import main

    sys.argv = ["syntk", *sys.argv[1:]]
    main()
