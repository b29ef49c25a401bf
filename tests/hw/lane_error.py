"""The one exception of the L1 lane."""

__all__ = ["LaneError"]


class LaneError(Exception):
    """A lane stage failed; the message names the stage and what to do next."""
