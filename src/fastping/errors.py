"""fastping's exceptions: one hierarchy, each message says what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .privilege import Diagnosis
    from .retry import Attempt


class FastpingError(Exception):
    """Base of every error fastping raises on purpose."""


class PermissionDenied(FastpingError, PermissionError):
    """The process may not open the socket a mode needs (CAP_NET_RAW, ping_group_range)."""


class ResolveError(FastpingError):
    """A host name did not resolve."""


class TargetError(FastpingError, ValueError):
    """A target is malformed (bad address, CIDR, range or file line)."""


class ConfigError(FastpingError, ValueError):
    """A configuration file or option is invalid."""


class SocketError(FastpingError, OSError):
    """A socket operation failed for a reason the user can act on."""


class TransientError(FastpingError):
    """A failure expected to clear by itself (a timeout, a link that dropped).

    Raise it (or a subclass) from any layer to tell `fastping.retry` that the
    operation is worth another attempt; other FastpingErrors fail at once.
    """


class NetworkTimeout(FastpingError, TimeoutError):
    """wait_for_network() ran out of time (also an asyncio.TimeoutError)."""


class MonitorNotRunning(FastpingError, RuntimeError):
    """The monitor is not started, or was stopped while someone waited on it."""


class RetryError(FastpingError):
    """The operation failed on every attempt it was allowed.

    `attempts` is the history (a list of `Attempt`), `last_error` the final
    failure (also `__cause__`), `name` the operation's name.
    """

    def __init__(self, message: str, *, name: str, attempts: list[Attempt]) -> None:
        super().__init__(message)
        self.name = name
        self.attempts = attempts
        self.last_error: BaseException | None = attempts[-1].error if attempts else None


class RetryTimeout(RetryError, TimeoutError):
    """The overall deadline (`timeout_s`) passed before the operation succeeded."""


class UseSubprocess(PermissionDenied):
    """No ICMP socket is wanted or allowed, but the system ``ping`` can be used:
    run :func:`subprocess_sweep`. ``reason`` says why; ``diagnosis`` has the facts."""

    def __init__(self, reason: str, diagnosis: Diagnosis | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.diagnosis = diagnosis


class ChunkError(FastpingError, ValueError):
    """A blob that is not a chunk (wrong length): a damaged database row. A
    FastpingError, so the command line says it in one line (exit 4)."""
