"""Small Markdown formatting helpers (no tabulate dependency): numbers, mean ± std, tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

DASH = "–"


def _bad(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x, digits: int = 2, signed: bool = False, suffix: str = "") -> str:
    """A number with fixed decimals, '–' for missing/NaN; ``signed`` adds a leading '+'."""
    if _bad(x):
        return DASH
    x = float(x)
    if math.isinf(x):
        return ("+" if x > 0 else "-") + "inf"
    return f"{x:+.{digits}f}{suffix}" if signed else f"{x:.{digits}f}{suffix}"


def text(x) -> str:
    """A string cell, '–' for missing/NaN."""
    return DASH if _bad(x) else str(x)


def sig(x, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, '–' for missing/NaN."""
    return DASH if _bad(x) else f"{float(x):.{digits}g}"


def pm(mean, std, digits: int = 2, signed: bool = False, suffix: str = "") -> str:
    """'mean ± std'; the std part is left out when it is NaN (one seed)."""
    if _bad(mean):
        return DASH
    head = num(mean, digits, signed) + suffix
    return head if _bad(std) else f"{head} ± {num(std, digits)}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` is one of 'l'/'r' per column (default: l)."""
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} entries for {len(headers)} headers")
    rule = ["---:" if a == "r" else "---" for a in align]
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines)
