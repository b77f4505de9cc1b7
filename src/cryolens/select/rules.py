"""Selection rules on a metadata table: ``COLUMN OP NUMBER`` thresholds and class lists.

A rule is the text ``"rlnCtfMaxResolution < 5"``: a RELION column name, one of
``< <= > >= == !=`` and a number (units are the column's: Å for resolutions and
defocus, degrees for angles). A row passes a rule when the comparison is true; NaN
never passes. Rules are the non-interactive form of RELION's "subset selection" and
cryoSPARC's "curate exposures" thresholds.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["OPERATORS", "Rule", "MissingColumnError", "parse_rule", "parse_classes", "require_numeric"]

OPERATORS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_RULE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*([^\s<>=!]+)\s*$")


class MissingColumnError(ValueError):
    """A rule names a column the table lacks; ``available`` lists the table's columns."""

    def __init__(self, column: str, available: Sequence[str]) -> None:
        self.column, self.available = column, list(available)
        super().__init__(f"column {column} is not in the table (available: {', '.join(self.available)})")


@dataclass(frozen=True)
class Rule:
    """``column op value``; :meth:`mask` evaluates it on a table."""

    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"

    def mask(self, table: pd.DataFrame) -> np.ndarray:
        """Boolean per row (NaN fails every rule, ``!=`` included)."""
        values = require_numeric(table, self.column)
        with np.errstate(invalid="ignore"):
            return OPERATORS[self.op](values, self.value) & np.isfinite(values)


def parse_rule(text: str) -> Rule:
    """``"rlnCtfFigureOfMerit >= 0.1"`` -> :class:`Rule`; ValueError with the expected form otherwise."""
    m = _RULE.match(str(text))
    if m is None:
        raise ValueError(f"rule {text!r} is not of the form 'COLUMN OP NUMBER' with OP one of {' '.join(OPERATORS)}")
    column, op, number = m.groups()
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"rule {text!r}: {number!r} is not a number") from None
    return Rule(column, op, value)


def parse_classes(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """``"1,3"`` or ``[1, 3]`` -> ``(1, 3)`` (class numbers are 1-based, as rlnClassNumber)."""
    items = text.replace(" ", "").split(",") if isinstance(text, str) else list(text or ())
    if not [c for c in items if str(c) != ""]:
        return ()
    try:
        classes = tuple(int(c) for c in items if str(c) != "")
    except ValueError:
        raise ValueError(f"class list {text!r} is not a comma-separated list of class numbers (e.g. 1,3)") from None
    if min(classes) < 1:
        raise ValueError(f"class list {text!r}: class numbers start at 1")
    return classes


def require_numeric(table: pd.DataFrame, column: str) -> np.ndarray:
    """The column as float64; MissingColumnError when absent, ValueError when not numeric."""
    if column not in table.columns:
        raise MissingColumnError(column, table.columns)
    import pandas as pd  # here: the CLI imports these rules at start-up, pandas only when a table is read

    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    if len(values) and np.isnan(values).all() and not table[column].isna().all():
        raise ValueError(f"column {column} holds text, not numbers; a rule compares a numeric column")
    return values
