"""One outcome numbering (results.EventKind) shared by the core's event kinds, the
chunk codes on disk and the Python sockets; slot_stats() as a SlotStats read by name.
Real sockets on loopback only."""

from __future__ import annotations

import math
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import needs_root
from fastping import _icmp, chunk, results, tcpconnect
from fastping.results import OUTCOME_BY_KIND, EventKind, Outcome, SlotStats

UNITS = Path(__file__).resolve().parent.parent / "src" / "fastping" / "units"

# A chunk as the format wrote it before the numbering was unified (made with that
# code): ten records, one per code 0..9, t = 1.7e9 + 0.25 + i, RTT 1.5 * i ms for
# the codes that have one (reply, duplicate, late, closed), seq -1 for the engine-made
# codes, TTL 64 with an RTT. Old databases hold exactly such bytes.
OLD_CHUNK = bytes.fromhex(
    "00001040fc54d94100005040fc54d94100009040fc54d9410000d040fc54d94100001041fc54d941"
    "00005041fc54d94100009041fc54d9410000d041fc54d94100001042fc54d94100005042fc54d941"
    "000000000000c07f0000c07f0000c07f0000c07f0000c07f0000c07f000028410000404100005841"
    "0000000001000000020000000300000004000000ffffffffffffffff070000000800000009000000"
    "0001020304050607080940000000000000404040"
)
OLD_CODES = {  # what those codes meant then, and must mean now
    0: Outcome.REPLY,
    1: Outcome.TIMEOUT,
    2: Outcome.UNREACHABLE,
    3: Outcome.TIME_EXCEEDED,
    4: Outcome.SEND_ERROR,
    5: Outcome.LOCAL_DOWN,
    6: Outcome.RESOLVE_ERROR,
    7: Outcome.DUPLICATE,
    8: Outcome.LATE,
    9: Outcome.CLOSED,
}


def test_every_outcome_has_one_number_everywhere() -> None:
    assert [k.name for k in EventKind] == [o.name for o in Outcome]  # one kind per outcome
    for o in Outcome:
        n = chunk.OUTCOME_CODE[o]
        assert n == EventKind[o.name] == getattr(results, f"EV_{o.name}"), o
        assert getattr(_icmp, f"EV_{o.name}") == n, o  # the compiled core
        assert OUTCOME_BY_KIND[n] is o and chunk.OUTCOME_BY_CODE[n] is o
    assert sorted(chunk.OUTCOME_CODE.values()) == list(range(len(Outcome)))


def test_the_python_sockets_number_kinds_as_the_core() -> None:
    # tcpconnect's ConnectSocket (the engine's socket without CAP_NET_RAW) and the
    # tests' fake use the table's names, not numbers of their own
    from tests import engine_fakes

    for mod in (tcpconnect, engine_fakes):
        names = [n for n in vars(mod) if re.fullmatch(r"EV_[A-Z_]+", n)]
        assert names, mod
        for n in names:
            assert getattr(mod, n) == getattr(_icmp, n), (mod, n)


def test_the_compiled_table_is_the_tables() -> None:
    # units/kinds.pxi is written by setup.py from results.EventKind; a table edited
    # without a rebuild (or a hand edit of the unit) shows here
    assert (UNITS / "kinds.pxi").read_text() == results.kinds_pxi()
    assert "CODE_CLOSED" not in (UNITS / "defs.pxi").read_text()


def test_a_chunk_written_before_decodes_the_same() -> None:
    c = chunk.unpack(OLD_CHUNK)
    assert len(c) == 10
    assert [chunk.OUTCOME_BY_CODE[x] for x in c.code] == [OLD_CODES[i] for i in range(10)]
    assert list(c.t) == [1_700_000_000.25 + i for i in range(10)]
    with_rtt = {0, 7, 8, 9}
    for i in range(10):
        if i in with_rtt:
            assert c.rtt_ms[i] == 1.5 * i and c.ttl[i] == 64
        else:
            assert math.isnan(c.rtt_ms[i]) and c.ttl[i] == 0
    assert list(c.seq) == [i if i not in (5, 6) else -1 for i in range(10)]
    # and packing those columns today gives the same bytes
    again = chunk.pack(
        list(c.t),
        [None if math.isnan(r) else r for r in c.rtt_ms],
        list(c.seq),
        [chunk.OUTCOME_CODE[OLD_CODES[i]] for i in range(10)],
        list(c.ttl),
    )
    assert again == OLD_CHUNK


def test_the_chunk_docstring_lists_the_codes() -> None:
    doc = chunk.__doc__ or ""
    codes = doc[doc.index("code  uint8[n]") : doc.index("ttl   uint8[n]")]
    listed = {int(n): name for n, name in re.findall(r"(\d+) ([a-z]+(?: [a-z]+)?)[,\n]", codes)}
    assert listed == {n: o.value.replace("_", " ") for o, n in chunk.OUTCOME_CODE.items()}


# ---------------------------------------------------------------- SlotStats, real sockets
def _drain(sock: Any, until: int, timeout_s: float = 2.0) -> list[Any]:
    """Events until ``until`` arrived (or the time is up)."""
    evs: list[Any] = []
    end = time.monotonic() + timeout_s
    while len(evs) < until and time.monotonic() < end:
        evs += sock.recv()
        time.sleep(0.005)
    return evs


def _count(evs: list[Any], slot: int) -> Counter[int]:
    return Counter(e[1] for e in evs if e[0] == slot)


@needs_root
def test_slot_stats_fields_agree_with_the_events_on_loopback() -> None:
    with _icmp.IcmpSocket(socket.AF_INET, window=2) as s:
        a, b = s.add_target("127.0.0.1"), s.add_target("127.0.0.2")
        evs = s.send([a, b], drain=False)
        evs += _drain(s, 2)  # two replies
        evs += s.send([a], drain=False)
        evs += _drain(s, 1)  # a's second reply
        evs += s.send([b], drain=False)
        evs += s.expire(0.0)  # b's second probe timed out before its reply is read ...
        evs += _drain(s, 1)  # ... which is late
        sa, sb = s.slot_stats(a), s.slot_stats(b)
    assert isinstance(sa, SlotStats) and sa._fields == SlotStats._fields
    assert _count(evs, a) == {_icmp.EV_REPLY: 2}, evs
    assert _count(evs, b) == {_icmp.EV_REPLY: 1, _icmp.EV_TIMEOUT: 1, _icmp.EV_LATE: 1}, evs
    assert (sa.sent, sa.received, sa.timeouts, sa.late) == (2, 2, 0, 0)
    assert (sb.sent, sb.received, sb.timeouts, sb.late) == (2, 1, 1, 1)
    for st in (sa, sb):
        assert st.duplicates == st.unreachable == st.time_exceeded == st.send_errors == 0
        assert st.last_ttl == 64 and st.last_err_router is None and st.user_timed == 0
    rtts = [e[3] for e in evs if e[0] == a]
    assert (sa.min_ns, sa.max_ns, sa.sum_ns) == (min(rtts), max(rtts), sum(rtts))
    assert sa.jitter_n == 1 and sa.jitter_sum_ns == abs(rtts[1] - rtts[0])
    assert sa.sumsq_ns2 == pytest.approx(sum(float(r) ** 2 for r in rtts))
    (rb,) = [e[3] for e in evs if e[0] == b and e[1] == _icmp.EV_REPLY]
    assert sb.min_ns == sb.max_ns == sb.sum_ns == rb  # the late reply has no place here


@needs_root
def test_a_timed_out_probe_is_a_timeout_then_late_by_name() -> None:
    with _icmp.IcmpSocket(socket.AF_INET, window=2) as s:
        a = s.add_target("127.0.0.1")
        evs = s.send([a], drain=False)
        evs += s.expire(0.0)  # before its reply is read: timed out
        evs += _drain(s, 2)
        st = s.slot_stats(a)
    assert [e[1] for e in evs] == [_icmp.EV_TIMEOUT, _icmp.EV_LATE], evs
    assert (_icmp.EV_TIMEOUT, _icmp.EV_LATE) == (1, 8)
    assert (st.sent, st.received, st.timeouts, st.late) == (1, 0, 1, 1)


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    """A listening port and a closed one on 127.0.0.1."""
    with socket.socket() as ls, socket.socket() as free:
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        free.bind(("127.0.0.1", 0))
        yield ls.getsockname()[1], free.getsockname()[1]


def test_the_connect_socket_counts_by_name_and_logs_closed_as_its_code(
    ports: tuple[int, int],
) -> None:
    open_port, closed_port = ports
    with tcpconnect.ConnectSocket(socket.AF_INET, window=2) as cs:
        cs.set_log(2)
        op, cl = cs.add_target("127.0.0.1", open_port), cs.add_target("127.0.0.1", closed_port)
        evs: list[Any] = []
        for _ in range(2):
            evs += cs.send([op, cl])
            evs += _drain(cs, len(evs) + 2)
        so, sc = cs.slot_stats(op), cs.slot_stats(cl)
        codes = {slot: list(chunk.unpack(blob).code) for slot, blob in cs.take_log()}
    assert isinstance(so, SlotStats)
    assert _count(evs, op) == {_icmp.EV_REPLY: 2} and _count(evs, cl) == {_icmp.EV_CLOSED: 2}
    assert (so.sent, so.received, so.timeouts) == (2, 2, 0)
    assert (sc.sent, sc.received) == (2, 2) and cs.slot_closed(cl) == 2  # a RST is an answer
    assert so.min_ns <= so.max_ns and so.sum_ns >= 2 * so.min_ns > 0 and so.jitter_n == 1
    assert codes == {op: [0, 0], cl: [9, 9]}  # the stored codes of reply and closed
    assert codes[cl][0] == chunk.OUTCOME_CODE[Outcome.CLOSED] == _icmp.EV_CLOSED


@needs_root
def test_events_are_core_events_by_name_from_every_socket() -> None:
    """send / recv / expire / sweep(events=True) return results.CoreEvent: a reply
    with its TTL and no error fields, a send error with its errno, named alike by the
    core and the connect() fallback."""
    from fastping.results import CoreEvent

    with _icmp.IcmpSocket(socket.AF_INET) as s:
        s.add_target("127.0.0.1")
        evs = s.sweep(count=1, timeout_s=1.0, events=True) or []
        (e,) = evs
        assert type(e) is CoreEvent and e.kind == EventKind.REPLY and e.slot == 0
        assert e.rtt_ns > 0 and e.ttl == 64 and e.errno is None
        assert (e.icmp_type, e.icmp_code, e.router) == (None, None, None)
        assert tuple(e) == (e.slot, e.kind, e.seq, e.rtt_ns, e.ttl, None, None, None, None)
    with tcpconnect.ConnectSocket(socket.AF_INET) as cs:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        try:
            slot = cs.add_target("127.0.0.1", listener.getsockname()[1])
            got = cs.send([slot])
            for _ in range(200):
                if got:
                    break
                time.sleep(0.005)
                got = cs.recv()
        finally:
            listener.close()
        (c,) = got
        assert type(c) is CoreEvent and c.kind == EventKind.REPLY and c.rtt_ns > 0
        assert c.ttl is None and c.errno is None  # connect() sees no TTL
