"""`python -m pykvm`, and the `pykvm` script (pyproject's [project.scripts]): the CLI."""
import sys


def run() -> None:
    """Import the CLI and run it.

    Importing it takes a few tenths of a second (click, on a loaded host more):
    a Ctrl-C in that window ends pykvm as it does later, with one line and
    status 130, not with a traceback out of an import.

    `pykvm container run ...` is tried without click first: click's import
    costs as much as the rest of a short container's run
    (pykvm/commands/container/running.py); it returns only when click must
    read the command line.
    """
    try:
        if sys.argv[1:3] == ["container", "run"]:
            from pykvm.commands.container.running import main as run_without_click
            run_without_click(sys.argv[3:])
        from pykvm.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("pykvm: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
