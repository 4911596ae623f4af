"""Stub of fastping._pipeline: targets in, result lines out (see the .pyx docstring).

TargetSet parses target text into packed address arrays (IcmpSocket.append_packed);
Formatter writes text / JSON lines / CSV / bare targets from core rows
(IcmpSocket.export_rows), byte for byte what fastping.formats writes; Columns
turns core rows into arrays (SweepResult.columns()).
"""

from array import array
from collections.abc import Iterable
from typing import Any, BinaryIO, Final, Protocol

from typing_extensions import disjoint_base

MAX_LINE: Final[int]
MAX_ERRORS_KEPT: Final[int]
GARBAGE_MIN_LINES: Final[int]
RUN_V4: Final[int]
RUN_V6: Final[int]
RUN_NAME: Final[int]
FMT_NONE: Final[int]
FMT_TEXT: Final[int]
FMT_JSON: Final[int]
FMT_CSV: Final[int]
FMT_TARGET: Final[int]
SEL_ALL: Final[int]
SEL_ALIVE: Final[int]
SEL_DOWN: Final[int]
ROW_SIZE: Final[int]
CSV_HEADER: Final[str]
COLUMNS: Final[tuple[tuple[str, str], ...]]

_Buffer = bytes | bytearray | memoryview

class _Reader(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...

class _Writer(Protocol):
    def write(self, data: bytes, /) -> Any: ...

@disjoint_base
class TargetSet:
    """Targets parsed into packed arrays, in the order given. ``runs()``: (kind,
    count) in host order; ``labels``: host index -> the target as typed where it
    is not the address as printed; ``errors``: (source, line, message) of the
    first MAX_ERRORS_KEPT bad lines, ``n_errors`` all of them; ``fatal``: why
    reading stopped early (a line over MAX_LINE bytes, a mostly-garbage file)."""

    names: list[str]
    labels: dict[int, str]
    errors: list[tuple[str | None, int, str]]
    n_errors: int
    n_lines: int
    n_hosts: int
    n_v4: int
    n_v6: int
    fatal: str | None
    first_v4: str | None
    first_v6: str | None
    def __init__(self) -> None: ...
    def add_arguments(self, texts: Iterable[str]) -> None:
        """Targets given one per argument (the command line, a library list)."""
    def add_file(self, f: _Reader | BinaryIO, source: str) -> None:
        """Read targets from a binary file object in 1 MiB reads (bounded memory);
        stops early (``fatal``) at an over-long line or a mostly-garbage file."""
    def runs(self) -> list[tuple[int, int]]:
        """(kind, count) pairs in host order."""
    def packed(self, family: int) -> bytes:
        """The family's addresses, packed (network order, 4 or 16 bytes each)."""
    def take_packed(self, family: int) -> PackedAddresses:
        """Move the family's packed addresses out without a copy (see PackedAddresses);
        packed() of that family is empty afterwards, counts and runs stay."""
    def release_packed(self) -> None:
        """Free the packed addresses (the sockets have their copy)."""
    def address_strings(self) -> list[str]:
        """Every target as text, in host order."""

@disjoint_base
class Formatter:
    """Per-target output from core rows (``fmt``: FMT_*, ``select``: SEL_*,
    ``count``: probes per target). Output goes to ``stream.write`` each MiB and
    at ``flush``, or stays for ``getvalue``; ``alive``/``rows`` count every row."""

    fmt: int
    select: int
    count: int
    alive: int
    rows: int
    # a __cinit__ (tp_new) in the extension, hence __new__ here
    def __new__(
        cls, fmt: int, select: int, count: int, stream: _Writer | None = None
    ) -> Formatter: ...
    def write_rows(self, rows: _Buffer, n: int, family: int, label: str | None = None) -> None:
        """Format ``n`` rows; ``label``: the target as typed, for one row whose
        target is not its address."""
    def write_text(self, text: str) -> None:
        """Append preformatted output."""
    def count_row(self, alive: bool) -> None:
        """Count a row formatted elsewhere."""
    def getvalue(self) -> bytes:
        """The pending output, and forget it."""
    def flush(self) -> None:
        """Hand the pending output to the stream."""

@disjoint_base
class Columns:
    """Core rows as arrays (see SweepResult.columns)."""

    n: int
    arrays: dict[str, array[Any]]
    def __init__(self) -> None: ...
    def add_rows(self, rows: _Buffer, n: int, family: int) -> None: ...
    def add_missing(self) -> None: ...
    def result(self) -> dict[str, array[Any] | bytes]: ...

@disjoint_base
class PackedAddresses:
    """Addresses moved out of a TargetSet by take_packed: a read-only buffer of
    network-order addresses (4 or 16 bytes each), freed with the last view of it."""

    def __len__(self) -> int: ...

def expo_lines(
    heads: list[bytes],
    tails: list[bytes],
    rows: list[list[int]],
    cumulative: bool = False,
    trailers: list[bytes] | None = None,
) -> bytes:
    """Prometheus text lines: heads[i] + tails[j] + str(rows[i][j]) + newline, per
    series i and column j (running sums with ``cumulative``), then trailers[i]."""
