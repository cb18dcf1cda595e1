"""Sizes as people read them, the one formatter every table and report uses."""

from __future__ import annotations


def format_bytes(size: float | None) -> str:
    """``1536`` → ``"1.5 KB"`` (powers of 1024, one decimal past bytes); ``None`` → ``"—"``."""
    if size is None:
        return "—"
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
