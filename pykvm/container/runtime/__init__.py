"""The runtime side of containers (Run): the launcher -> monitor -> init ->
command process tree (container.py) and what it sets up: namespaces,
rootfs, cgroups, capabilities, terminal, state, logs, exec."""
