"""The container half of pykvm: namespaces, cgroups, root filesystems, OCI images and registries.

See docs/ (chapters on containers) and DESIGN.md for the map.
"""
