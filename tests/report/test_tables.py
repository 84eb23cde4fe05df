"""The one markdown table writer: padded columns, left or right alignment, used by every report."""
import pytest

from mmfm.report import markdown_table


def test_columns_are_padded_and_aligned():
    table = markdown_table(["model", "top1"], [["a-long-name", "9.50"], ["b", "10.25"]], align="lr")
    lines = table.splitlines()
    assert lines == ["| model       |  top1 |",
                     "|-------------|------:|",
                     "| a-long-name |  9.50 |",
                     "| b           | 10.25 |"]
    assert markdown_table(["x"], [[1234]]) == "| x     |\n|-------|\n| 1,234 |"    # default: left, fmt'd


def test_align_must_name_every_column():
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        markdown_table(["a", "b"], [[1, 2]], align="r")
