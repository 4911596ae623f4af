"""fastping: watch very many hosts at once.

>>> import fastping
>>> res = fastping.sweep(["127.0.0.1", "::1"], rate_pps=0)
>>> [h.received for h in res]
[1, 1]
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

try:
    from . import _icmp as _core  # noqa: F401
    from . import _pipeline as _pipeline  # noqa: F401

    HAS_EXTENSION = True
except ImportError:  # pragma: no cover - a broken wheel; tests fail on this
    HAS_EXTENSION = False

from .errors import (
    ConfigError,
    FastpingError,
    PermissionDenied,
    ResolveError,
    SocketError,
    TargetError,
)
from .results import HostResult, Outcome, ProbeResult, SweepResult

# A library's logging is the host program's to configure: without this, Python's
# last-resort handler would print fastping's warnings on stderr by itself.
logging.getLogger("fastping").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .api import async_ping, async_sweep, ping, sweep

__all__ = [
    "HAS_EXTENSION",
    "ConfigError",
    "FastpingError",
    "HostResult",
    "Outcome",
    "PermissionDenied",
    "ProbeResult",
    "ResolveError",
    "SocketError",
    "SweepResult",
    "TargetError",
    "async_ping",
    "async_sweep",
    "ping",
    "sweep",
]


def __getattr__(name: str) -> Any:  # lazy: `import fastping` stays cheap
    if name in ("sweep", "ping", "async_sweep", "async_ping"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'fastping' has no attribute {name!r}")
