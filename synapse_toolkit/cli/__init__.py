"""The `syntk` command line (Typer): one module per command group, joined in :mod:`.main`."""
