"""Split one target list over several agents: ``--shard i/n``.

Every agent gets the same list and keeps the targets whose shard is its own, so
``n`` agents cover the list with no overlap and no gap, with no coordination.

The shard of a target depends on that target's string alone (never on the rest of
the list, never on Python's per-process ``hash()``), so a target stays on its agent
when other targets join or leave the list. The hash is SHA-1 of the target
(stripped, lower-cased: DNS names are case-insensitive) folded to 64 bits, and the
64-bit key is mapped to ``0 .. n-1`` with Lamping and Veach's jump consistent hash
("A Fast, Minimal Memory, Consistent Hash Algorithm", 2014). Jump hash spreads
keys evenly like ``key % n`` but, when an agent is added (``n -> n + 1``), moves
only the ~1/(n+1) of the targets that the new agent takes; ``key % n`` would move
almost all of them. Unlike rendezvous hashing it costs one hash per target, not n.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .errors import ConfigError

_MASK64 = (1 << 64) - 1
_JUMP_MULT = 2862933555777608757  # the paper's 64-bit LCG multiplier


def target_key(target: str) -> int:
    """The stable 64-bit key of a target (same on every machine and run)."""
    digest = hashlib.sha1(target.strip().lower().encode("utf-8"), usedforsecurity=False)
    return int.from_bytes(digest.digest()[:8], "big")


def jump_hash(key: int, n: int) -> int:
    """Lamping & Veach jump consistent hash: bucket of ``key`` among ``n``."""
    if n < 1:
        raise ValueError(f"n={n}: need at least one bucket")
    b, j = -1, 0
    key &= _MASK64
    while j < n:
        b = j
        key = (key * _JUMP_MULT + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(target: str, count: int) -> int:
    """Which of ``count`` shards ``target`` belongs to."""
    return jump_hash(target_key(target), count)


def select(targets: Iterable[str], shard: tuple[int, int] | None) -> list[str]:
    """The targets of ``shard`` = ``(index, count)``, in their order (None: all)."""
    if shard is None:
        return list(targets)
    index, count = shard
    return [t for t in targets if shard_of(t, count) == index]


def parse_shard(text: str, what: str = "--shard") -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ConfigError saying how otherwise."""
    i, sep, n = str(text).partition("/")
    i, n = i.strip(), n.strip()
    if not (sep and i.isdigit() and n.isdigit()):
        raise ConfigError(
            f'{what} {text!r}: use "I/N" (this agent\'s share I of N, counted from 0), '
            "e.g. 0/4 .. 3/4 for four agents"
        )
    index, count = int(i), int(n)
    if not 0 <= index < count:
        raise ConfigError(
            f"{what} {text!r}: needs 0 <= I < N (shares are counted from 0: "
            f"{max(count, 1)} agents use 0/{max(count, 1)} .. {max(count, 1) - 1}/{max(count, 1)})"
        )
    return index, count
