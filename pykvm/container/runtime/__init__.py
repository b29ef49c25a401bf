"""The runtime side of containers (Run): the launcher -> monitor -> init ->
command process tree (launcher.py, monitor.py, init.py, command.py) and what
it sets up: namespaces, rootfs, cgroups, capabilities, terminal, state, logs, exec."""
