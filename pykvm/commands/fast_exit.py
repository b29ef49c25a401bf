"""How pykvm's programs end (`pykvm`, `pykvm-runc`): at once, without tearing the interpreter down;
and the one line an error that is not a bug ends the `pykvm` CLI with.

At exit CPython frees every module and collects the garbage: 5-9 ms for the `pykvm` CLI
(click brings ~100 modules), 3-7 ms for `pykvm-runc`, which an engine runs three times or
more per container.  The process is ending, so the kernel reclaims it all anyway.
"""
from __future__ import annotations

import sys

__all__ = ["exit_now", "EXIT_STATUS_MASK", "error_line"]

# A process's exit status is 8 bits (wait(2)): larger statuses end as their low byte, as in C.
EXIT_STATUS_MASK = 0xFF


def exit_now(code) -> None:
    """End the process with status `code` (an int, None for 0, or sys.exit's message).

    What exit must still do happens here: atexit callbacks, then flushing stdout and
    stderr.  With other threads still running, or a profiler or debugger watching, the
    normal exit is kept.
    """
    import atexit
    import os

    if code is not None and not isinstance(code, int):      # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    code = (code or 0) & EXIT_STATUS_MASK   # debug-exit's (V << 1) | 1 can be 33 bits wide
    # Only the threading module starts threads that exit waits for; not imported, none
    # were started (and importing it to ask would cost each pykvm-runc call ~1 ms).
    threading = sys.modules.get("threading")
    threads = threading.active_count() if threading else 1
    if threads > 1 or sys.getprofile() or sys.gettrace():
        sys.exit(code)      # threads to wait for; or `python -m cProfile/pdb ...`, which write
                            # their results after the module returns: the normal exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):                      # a closed pipe: nothing to save
            pass
    os._exit(code)


def error_line(error: BaseException) -> tuple[str, int] | None:
    """The line (without its newline) and exit status the `pykvm` CLI ends with after
    `error`, or None for a bug, whose traceback shows where it is.

    Shared by click's path (cli.py) and the one that parses without click
    (commands/container/running.py), so the two end alike.
    """
    import errno

    from pykvm.errors import PyKvmError

    if isinstance(error, PyKvmError):
        return f"pykvm: error: {error}", error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return "pykvm: interrupted", 130
    if isinstance(error, BrokenPipeError):
        return "", 141
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = error.filename2 or error.filename
        return ("pykvm: error: no space left on device" + (f" writing {where}" if where else "")
                + ": free some space and try again (what was half-written is not kept)", 1)
    return None
