"""One duration syntax for every setting that takes one (config file, retry,
network): seconds as a number (``1.5``) or Go-style text (``"500ms"``, ``"1s"``,
``"2m"``, ``"1m30s"``, ``"1h"``; also ``ns``, ``us``). Light: no imports beyond re."""

from __future__ import annotations

import math
import re

UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
SYNTAX = "seconds as a number or a duration like 500ms, 1s, 2m, 1m30s"


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration string. ValueError (saying what is
    allowed) for anything else, booleans, NaN and infinities included."""
    seconds: float | None = None
    if isinstance(value, bool):
        pass  # bool is an int; `true` seconds is a typo, not a duration
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)  # bare number: seconds
        except ValueError:
            pos, total = 0, 0.0
            for m in _PART.finditer(text):
                if m.start() != pos:
                    break
                total += float(m.group(1)) * UNITS_S[m.group(2)]
                pos = m.end()
            if pos == len(text) and pos > 0:
                seconds = total
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"expected {SYNTAX}, got {value!r}")
    return seconds
