"""One parser for command-line config overrides: ``--set key.sub=value``.

``mmfm run`` (every config, the experiments' included) and ``benchmarks/seeds.py`` take overrides this way: a dotted path into the config's nested dicts (a number indexes a list: ``models.0.train.lr``)
and a YAML value (``2`` is an int, ``[1, 2]`` a list, ``null`` None). They are applied to the raw dict
*before* validation, so the config's own pydantic error names a bad key or value, as for one in the file.
"""
from __future__ import annotations

from typing import Any, Iterable

import yaml


def parse_override(assignment: str) -> tuple[str, Any]:
    """``"a.b=2"`` -> ``("a.b", 2)``; the value is parsed as YAML."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {assignment!r} is not KEY=VALUE (e.g. train.epochs=2)")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"override {assignment!r}: the value is not valid YAML ({e.problem or e}); "
                         f"quote it, e.g. {key}='\"...\"'") from None


def set_path(d: dict, key: str, value: Any) -> None:
    """Set ``d[a][b]...= value`` for ``key="a.b..."``, creating missing dicts; numbers index lists."""
    node: Any = d
    *parents, last = key.split(".")
    for part in parents:
        node = _child(node, part, key)
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ValueError(f"override {key!r}: {'.'.join(parents)} is a value ({node!r}), not a section")


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if not isinstance(node, dict):
        raise ValueError(f"override {key!r}: {part!r} is inside a value ({node!r}), not a section")
    if node.get(part) is None:     # absent, or an empty YAML section (`frozen:` with nothing under it)
        node[part] = {}
    return node[part]


def _index(node: list, part: str, key: str) -> int:
    try:
        i = int(part)
        node[i]
    except (ValueError, IndexError):
        raise ValueError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}") from None
    return i


def apply_overrides(raw: dict, assignments: Iterable[str]) -> dict:
    """Apply ``KEY=VALUE`` assignments to ``raw`` in place (and return it)."""
    for assignment in assignments:
        key, value = parse_override(assignment)
        set_path(raw, key, value)
    return raw
