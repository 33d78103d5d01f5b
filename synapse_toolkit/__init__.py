"""syntk: a plugin-based toolkit for connectomics on EM volumes and calcium imaging."""

__version__ = "0.1.0"
