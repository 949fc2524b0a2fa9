"""Bad data, found while listing, checking or loading a dataset: one message per file at fault.

Training (which stops at the first problem, or at start-up with a summary) and
``python -m segfw.data.inspect`` (which lists them all) report the same messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from segfw.errors import DataError

# The kinds of problem, in the order the inspect report lists them.
MISSING_PAIR = "missing pair"
UNREADABLE = "unreadable file"
SIZE_MISMATCH = "size mismatch"
MASK_FORMAT = "mask format"
UNKNOWN_LABELS = "unknown label values"
KINDS = (MISSING_PAIR, UNREADABLE, SIZE_MISMATCH, MASK_FORMAT, UNKNOWN_LABELS)


@dataclass(frozen=True)
class Problem:
    """A problem found without raising, for reports and summaries."""

    kind: str
    message: str

    @classmethod
    def of(cls, error: DataError) -> Problem:
        return cls(error.kind, str(error))


def summary(problems: Sequence[Problem], split: str, shown: int = 5) -> str:
    """One message for a start-up failure: the count per kind and the first few problems."""
    counts = {kind: sum(p.kind == kind for p in problems) for kind in KINDS}
    head = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    lines = [f"The {split} split has {len(problems)} problem(s) ({head}):"]
    lines += [f"  - {p.message}" for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(
            f"  ... and {len(problems) - shown} more: `python -m segfw.data.inspect` with the same "
            f"data overrides lists them all."
        )
    return "\n".join(lines)
