"""synapse_toolkit.memory: the malloc arena limit respects the user's environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = "from synapse_toolkit.memory import limit_malloc_arenas; print(limit_malloc_arenas())"


def _run(env_extra: dict[str, str]) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env_extra
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_arena_limit_is_set_unless_the_environment_sets_one():
    assert _run({}) == "True"
    assert _run({"MALLOC_ARENA_MAX": "4"}) == "False"
