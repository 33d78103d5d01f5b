"""syntk's dataset and model registry: verified, cached, resumable downloads that work offline.

- :class:`Entry` — one file or archive (url + mirrors, or a file bundled in a package), pinned by
  sha256 or explicitly unpinned; :class:`DatasetRegistry` — entries and groups, loaded from the
  registry TOML files (:func:`registry_dir`) and from plugins' ``syntk_register_datasets`` hook.
- :func:`fetch` (an entry or a group), :func:`resolve_dataset` (the path a pipeline reads),
  :func:`model_path` (an ONNX model, verified before use), :func:`verify_entry`.
- Cache: ``$SYNTK_DATA_DIR`` or the OS cache; ``SYNTK_OFFLINE=1`` forbids network access.
"""

from synapse_toolkit.datasets.cache import cache_dir, offline
from synapse_toolkit.datasets.download import DownloadProgress
from synapse_toolkit.datasets.entries import Entry, make_entry
from synapse_toolkit.datasets.fetching import (
    UnpinnedDownloadWarning,
    VerifyResult,
    cached_file,
    fetch,
    fetch_command,
    fetch_entry,
    is_cached,
    model_path,
    resolve_dataset,
    verify_entry,
)
from synapse_toolkit.datasets.registry import (
    DatasetRegistry,
    Group,
    get_registry,
    load_registry,
    registry_dir,
    reset_registry,
)

__all__ = [
    "DatasetRegistry",
    "DownloadProgress",
    "Entry",
    "Group",
    "UnpinnedDownloadWarning",
    "VerifyResult",
    "cache_dir",
    "cached_file",
    "fetch",
    "fetch_command",
    "fetch_entry",
    "get_registry",
    "is_cached",
    "load_registry",
    "make_entry",
    "model_path",
    "offline",
    "registry_dir",
    "reset_registry",
    "resolve_dataset",
    "verify_entry",
]
