"""`pykvm container ...`: the group and its commands (group.py lists where each lives).

Nothing is imported here: `pykvm container run` starts without click
(running.py), and importing this package comes first.
"""
