"""``--grid KEY=V1,V2,...``: run every prompt at every combination of settings."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from eft_local.errors import UserError
from eft_local.mix.mixture import check_delta_name
from eft_local.settings import GRID_KEYS, check, check_weight

Point = dict[str, Any]  # setting name -> value; delta weights under "weights"


# Rows one run may make (grid points × prompts), checked before the points are built.
MAX_ROWS = 1_000_000


def parse_grid(items: Sequence[str], settings: dict[str, Any], *, prompts: int) -> list[Point]:
    """The grid's points, first key varying slowest; ``[{}]`` without ``--grid``.

    ``prompts``: the rows of the input file (every command that has ``--grid`` passes it, so
    the one cap, ``MAX_ROWS`` points × prompts, holds for all). It is checked before any value
    is parsed or any point built. Known delta names come from the model set (checked by the
    caller); values are checked by each setting's one definition.
    """
    raw: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise UserError(f"--grid {item!r}: expected KEY=V1,V2,... (KEY: {', '.join(GRID_KEYS)} or weight.NAME)")
        if key in (k for k, _ in raw):
            raise UserError(f"--grid {key} given twice")
        raw.append((key, values.split(",")))
    _check_size([len(values) for _, values in raw], prompts)
    axes = [(key, [_value(key, v.strip()) for v in values]) for key, values in raw]
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        point: Point = {}
        for (key, _), value in zip(axes, combo):
            _set(point, key, value)
        points.append(point)
    return points or [{}]


def _check_size(axis_lengths: list[int], prompts: int) -> None:
    points = math.prod(axis_lengths)
    if points * max(prompts, 1) > MAX_ROWS:
        shape = " × ".join(map(str, axis_lengths))
        raise UserError(
            f"--grid makes {shape} = {points:,} points × {prompts:,} prompt(s) = {points * prompts:,} rows; "
            f"at most {MAX_ROWS:,} per run: split the grid or the prompts into several runs"
        )


def _value(key: str, text: str) -> Any:
    where = f"--grid {key}"
    if key.startswith("weight."):
        name = key.removeprefix("weight.")
        if name != "chat":
            check_delta_name(name, where)
        return check_weight(name, text, where)
    if key not in GRID_KEYS:
        raise UserError(f"--grid {key}: unknown key (use {', '.join(GRID_KEYS)} or weight.NAME)")
    return check(key, text, where)


def _set(point: Point, key: str, value: Any) -> None:
    if key == "weight.chat":
        point["alpha"] = value
    elif key.startswith("weight."):
        point.setdefault("weights", {})[key.removeprefix("weight.")] = value
    else:
        point[key] = value


def grid_deltas(points: list[Point]) -> set[str]:
    """Delta names the grid weights (to check against the loaded model set)."""
    return {name for p in points for name in p.get("weights", {})}
