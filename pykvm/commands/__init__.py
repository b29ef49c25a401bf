"""One module per `pykvm` subcommand, imported lazily by pykvm.cli."""
