"""`python -m synapse_toolkit.cli` runs the `syntk` command."""

from synapse_toolkit.cli.main import main

main()
