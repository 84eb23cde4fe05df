"""Tables and plots shared by every report."""
from .tables import fmt, human_bytes, human_count, is_fraction_metric, markdown_table

__all__ = ["fmt", "human_bytes", "human_count", "is_fraction_metric", "markdown_table"]
