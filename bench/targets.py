"""A benchmark's targets: each measured value against its bound, printed, and the exit status.

Every script in bench/ ends with `raise SystemExit(check([...]))`: one line per target, and a
non-zero exit when any is missed, so `make bench` fails where a number does.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

_COMPARE = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Target:
    """`value` (what was measured, in `unit`) must be `op` `bound`."""

    name: str
    value: float
    op: Literal[">=", "<="]
    bound: float
    unit: str = ""

    @property
    def met(self) -> bool:
        return math.isfinite(self.value) and bool(_COMPARE[self.op](self.value, self.bound))

    def line(self) -> str:
        verdict = "met" if self.met else "MISSED"
        return (
            f"target {self.name}: {self.value:.4g}{self.unit} "
            f"(target {self.op} {self.bound:g}{self.unit}): {verdict}"
        )


def check(targets: Sequence[Target]) -> int:
    """Print every target's line; the exit status: 0 when all are met, else 1."""
    for target in targets:
        print(target.line())
    missed = [target.name for target in targets if not target.met]
    if missed:
        print(f"missed {len(missed)} of {len(targets)} targets: {', '.join(missed)}")
    return 1 if missed else 0
