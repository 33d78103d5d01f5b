"""Exceptions that the CLI turns into one clear error line and a non-zero exit."""


class SyntkError(Exception):
    """A user-facing error: its message names the file, dataset, key or plugin at fault."""


class ConfigError(SyntkError):
    """A pipeline configuration is invalid (the message starts with the key path)."""


class DataError(SyntkError):
    """Input data is missing, unreadable or violates the data contract."""


class PluginError(SyntkError):
    """A plugin or stage is unknown, broken, or failed while running."""
