"""The one exception of the L1 lane."""

__all__ = ["LaneError", "L1Hung", "L1Died"]


class LaneError(Exception):
    """A lane stage failed; the message names the stage and what to do next."""


class L1Hung(LaneError):
    """L1 itself stopped (its heartbeat went silent): the emulated machine, not a test, failed."""


class L1Died(L1Hung):
    """QEMU exited while L1 ran the tests (L1 crashed or reset itself): booted afresh, as a hang."""
