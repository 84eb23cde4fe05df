"""Helpers for calling transformers quietly (a leaf: transformers is imported only when used)."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_transformers():
    """No info logs, load reports or progress bars from transformers while loading; the caller's settings
    are restored."""
    from transformers.utils import logging as hf_logging
    verbosity, bars_off = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled() is False
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars_off:
            hf_logging.enable_progress_bar()
