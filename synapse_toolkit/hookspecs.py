"""The hooks a syntk plugin can implement (pluggy project name ``syntk``).

A plugin is a module registered under the ``syntk`` entry-point group, built-in plugins included:

.. code-block:: toml

    [project.entry-points.syntk]
    my-detector = "my_package.syntk_plugin"

and the module implements any of these hooks with :data:`hookimpl`::

    from synapse_toolkit.hookspecs import hookimpl

    @hookimpl
    def syntk_register_stages(registry):
        registry.add_detector(MyDetector)

All hooks are called for every plugin; results are not used (registration happens through the
registry argument), so no hook is "first result wins".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from synapse_toolkit.stage_registry import StageRegistry

PROJECT = "syntk"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def syntk_register_stages(registry: StageRegistry) -> None:
    """Register stage plugins.

    :param registry: call ``registry.add_loader(cls)``, ``add_aligner``, ``add_detector``,
        ``add_agglomerator``, ``add_partner_assigner``, ``add_clusterer``, ``add_scorer``, or
        ``add_stage(kind, cls)`` for a kind of your own. ``cls`` subclasses the matching base in
        :mod:`synapse_toolkit.stages`.
    """


@hookspec
def syntk_register_datasets(registry: Any) -> None:
    """Register datasets and models.

    :param registry: a :class:`synapse_toolkit.datasets.DatasetRegistry`; call its ``add(entry)``
        with a dataset or model entry (url(s), sha256 or unpinned, size, licence, citation).
    """
