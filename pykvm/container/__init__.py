"""The container half of pykvm.

image/    the image side: Describe (dockerfile), Package (build, layer, store), Share (registry)
runtime/  the runtime side (Run): the launcher -> monitor -> init -> command process tree
          and what it sets up (namespaces, rootfs, cgroups, capabilities, terminal, state...)

Its commands live in pykvm.commands.container.
"""
