"""``argparse`` types that check a number's range, so a bad value is refused with a usage line
before anything is loaded (``--num-beams 0``, ``--top-p 5``, ``--threads 0``, ``--workers -1``)."""
from __future__ import annotations

import argparse
from typing import Callable


def _checked(cast: Callable[[str], float], ok: Callable[[float], bool], what: str, name: str):
    """An argparse type: ``cast(text)`` that must satisfy ``ok``; otherwise "must be <what>, got ..."."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = f"{what[0].upper()}{what[1:]}."
    return parse


positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1", "positive_int")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")
positive_float = _checked(float, lambda v: v > 0, "a number > 0", "positive_float")
probability = _checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]", "probability")
