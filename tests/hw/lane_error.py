"""The one exception of the L1 lane."""

__all__ = ["LaneError", "L1Hung"]


class LaneError(Exception):
    """A lane stage failed; the message names the stage and what to do next."""


class L1Hung(LaneError):
    """L1 itself stopped (its heartbeat went silent): the emulated machine, not a test, failed."""
