"""`python -m pykvm`, and the `pykvm` script (pyproject's [project.scripts]): the CLI."""
import sys


def run() -> None:
    """Import the CLI and run it.

    Importing it takes a few tenths of a second (click, on a loaded host more):
    a Ctrl-C in that window ends pykvm as it does later, with one line and
    status 130, not with a traceback out of an import.
    """
    try:
        from pykvm.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("pykvm: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
