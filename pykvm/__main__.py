"""`python -m pykvm`, and the `pykvm` script (pyproject's [project.scripts]): the CLI."""
import sys


def run() -> None:
    """Import the CLI and run it.

    Importing it takes a few tenths of a second (click, on a loaded host more):
    a Ctrl-C in that window ends pykvm as it does later, with one line and
    status 130, not with a traceback out of an import.

    `pykvm boot ...` and `pykvm container run ...` are tried without click
    first: click's import costs as much as the rest of a short container's
    run, and memory a VMM keeps while its guest runs
    (pykvm/commands/quickparse.py).  They return only when click must read
    the command line.
    """
    try:
        if sys.argv[1:2] == ["boot"]:
            from pykvm.commands.booting import main as boot_without_click
            boot_without_click(sys.argv[2:])
        elif sys.argv[1:3] == ["container", "run"]:
            from pykvm.commands.container.running import main as run_without_click
            run_without_click(sys.argv[3:])
        from pykvm.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("pykvm: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
