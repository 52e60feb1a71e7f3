"""How the report writes numbers: counts, ratios, shares, scores, FLOPs and durations ("n/a" when missing)."""

from __future__ import annotations

from .run import finite


def fmt_int(value) -> str:
    """1234567 -> '1,234,567'."""
    return f"{int(value):,}" if finite(value) else "n/a"


def fmt_ratio(value) -> str:
    """14.83 -> '14.8x', 1.974 -> '1.97x'."""
    if not finite(value):
        return "n/a"
    return f"{value:,.1f}x" if value >= 10 else f"{value:.2f}x"


def fmt_percent(value) -> str:
    """0.9123 -> '91.2%'."""
    return f"{100 * value:.1f}%" if finite(value) else "n/a"


def fmt_value(value) -> str:
    """Scores and free-form numbers: ints with separators, floats with 4 significant digits."""
    if value is None:
        return "n/a"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    if not finite(value):
        return "n/a"
    if isinstance(value, int):
        return fmt_int(value)
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def fmt_si(value) -> str:
    """22413312 -> '22.4 M' (FLOPs)."""
    if not finite(value):
        return "n/a"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def fmt_seconds(seconds) -> str:
    """12.34 -> '12.3 s', 125 -> '2 min 05 s', 7380 -> '2 h 03 min'."""
    if not finite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def ratio(num, den) -> float | None:
    """num / den, or None when either is missing or den is 0."""
    return num / den if finite(num) and finite(den) and den != 0 else None
