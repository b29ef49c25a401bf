"""`pykvm compare`: the same small workload as a VM and as a container, measured.

    workload.py    what runs on each side: the command line, the script, how to read its output
    measure.py     one run of a command as a child process: time to its first line, to its exit,
                   peak RSS and CPU time from wait4(2)'s rusage
    properties.py  one function per row of the seed's table (OS, size, startup, isolation, resources)
    report.py      runs both sides N times and assembles the report (a plain dict, the --json output)
    table.py       the report as a text or Markdown table, and --explain's notes
    plot.py        startup time and memory side by side, as an SVG drawn by hand

docs/30-vm-vs-container.md walks through a run.
"""
