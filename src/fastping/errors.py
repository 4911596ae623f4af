"""fastping's exceptions: one hierarchy, each message says what to do."""

from __future__ import annotations


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
