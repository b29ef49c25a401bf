"""Every `pykvm` command, one module each (container/ holds `pykvm container ...`).

Commands sit on top: they import the VM path (pykvm.vm), the container path
(pykvm.container) or the comparison of the two, lazily (lazy.py), never the reverse.
"""
