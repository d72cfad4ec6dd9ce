"""Human units for people reading sizes, durations and times (CLI tables, web page).

Kept apart from the CLI's table rendering so that the server's web page can use the
same words without importing the command line (an import-linter wall).
"""

from __future__ import annotations

import datetime as dt

__all__ = ["human_bytes", "human_duration", "human_time"]


def human_bytes(n: float) -> str:
    """196 MB, 1.4 GB, 512 bytes (decimal units, as disks are sold)."""
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if n < 10 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """3 h 12 min, 45 s, 2 d 3 h, 0.4 s; empty for None (not running)."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [(d, "d"), (h, "h"), (m, "min"), (s, "s")]
    while parts and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{v} {u}" for v, u in parts[:2] if v)


def human_time(iso: str | None) -> str:
    """An ISO time as ``2026-12-01 00:24 UTC`` (minutes are enough to read)."""
    if not iso:
        return ""
    t = dt.datetime.fromisoformat(iso)
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M") + (" UTC" if t.tzinfo is not None else "")
