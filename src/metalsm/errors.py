"""The one exception type users see for bad input: it always names the culprit."""

__all__ = [
    "MetalsmInputError",
]


class MetalsmInputError(ValueError):
    """Bad input: the message names the file, layer, key or value and what was expected."""
