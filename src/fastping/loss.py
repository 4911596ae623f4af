"""Loss patterns and outages: what kind of loss, since when, for how long.

A loss rate says how much was lost, not how: one probe in twenty at random and a
30 s outage every ten minutes both read 5 %. This module tells them apart, per
target, from the outcome log the engine already keeps (``fastping.chunk``: one
record per probe, a reply or a timeout, in time order). It is pure: no clock, no
event loop, no I/O; times come from the records; tests drive it directly.

Definitions (a "probe" is a record of the log: code ``reply`` = received, code
``timeout`` = lost; the log holds nothing else):

* **Loss run** ("burst" in the plain sense): a maximal sequence of consecutive
  lost probes. ``burst_hist`` counts runs by length; the **gap** between two runs
  is the run of received probes between them.
* **Gilbert model** (the two-state Markov chain of RFC 3611 section 4.7.2 with
  "lost in the bad state, received in the good one"): ``p`` = P(lost | previous
  received), ``r`` = P(received | previous lost), estimated from the transitions
  seen: ``p = received->lost / received-with-a-successor``, ``r = lost->received /
  lost-with-a-successor``. Mean run length is ``1/r``, mean gap ``1/p``; uniform
  random loss at rate ``L`` gives ``p = L`` and ``r = 1 - L``.
* **RFC 3611 bursts and gaps** (section 4.7.2, ``Gmin`` default 16): a *burst* is a
  group of lost probes where each loss follows the previous one with fewer than
  ``Gmin`` probes received in between, and the group holds two losses or more; an
  isolated loss (``Gmin`` or more received on both sides) belongs to the gap, as in
  the RFC's algorithm. ``burst_density`` = lost / probes within bursts (first to
  last loss of each burst), ``gap_density`` = lost / probes outside them. This is
  what catches a Gilbert-Elliott channel that also loses in its good state.
* **Outage**: ``OutageRule.min_lost`` (default 3) consecutive lost probes or more.
  It *starts* at the send time of its first lost probe and *ends* at the send time
  of the first probe answered after it (a timeout's record is written when the
  timeout expires, up to an expiry round late: send = record time - the target's
  timeout, or the last reply's send + the interval when that is earlier; a reply's
  send = record time - RTT), so both ends are within one probe interval of the
  truth. A run still going on when monitoring stops is an outage without an end.
  An outage of our own network (``local_down``: the network monitor said DOWN) is
  a separate kind (``target`` None) and never counted as a target's: a target's
  loss run that began within ``local_grace_s`` before our network went down is
  dropped (those probes are ours), one that began earlier is cut at that moment.
* **Jitter**, named precisely (RTT stands in for the one-way transit time; the
  send spacing cancels): ``rfc3550_jitter`` is RFC 3550 section 6.4.1's
  interarrival jitter, ``J += (|D| - J) / 16`` over successive replies;
  ``ipdv_quantiles`` are quantiles of RFC 3393's IP packet delay variation,
  ``|RTT(i) - RTT(i-1)|`` for probes ``i-1, i`` that are consecutive in sequence
  and both answered (the "consecutive packets" selection function). The store's
  ``jitter_ms`` (mean absolute difference of successive RTTs) stays as it was.
* **Incident**: outages of many targets in the same /24 (IPv4) or /64 (IPv6)
  starting within ``window_s`` of each other: one event in a big fleet, not 200.

Order: the log is in the order outcomes became known, not the order probes left
(with an interval shorter than the timeout, probe k+1's reply is logged before
probe k's timeout). Records are walked in sequence-number order; the records behind
a hole whose probe may still be out wait for the next hand-over.

Detection delay: the engine hands the log over every ``store_flush_s`` (10 s by
default), so an outage is reported up to that long after its third loss; its start
and end times are the probes' own, not the moment it was noticed.

Cost: ``LossTracker.feed_chunks`` gets each hand-over (one chunk per target); a
chunk that is all replies, in sequence, while the target has no open loss run is a
``bytes`` scan, two ints read and four additions (~0.7 us). Only chunks with a
loss (or a hole) are walked record by record (~12 us for ten records).
"""

from __future__ import annotations

import ipaddress
import math
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from .chunk import OUTCOME_CODE, RECORD_SIZE
from .results import Outcome, percentile

_REPLY = OUTCOME_CODE[Outcome.REPLY]
_TIMEOUT = OUTCOME_CODE[Outcome.TIMEOUT]
_LOST_BYTE = bytes((_TIMEOUT,))
_SWAP = sys.byteorder != "little"
_D = struct.Struct("<d")
_F = struct.Struct("<f")
_I = struct.Struct("<i")

DEFAULT_MIN_LOST = 3
DEFAULT_GMIN = 16  # RFC 3611 section 4.7.2: "the value of Gmin SHOULD be 16"
# upper bounds of the burst-length histogram (runs of consecutive losses); +Inf last
BURST_BUCKETS: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 50, 100, 1000)
DEFAULT_LOCAL_GRACE_S = 5.0
# a timeout is known this long after timeout_s at most (an expiry round, loop lag)
HOLD_MARGIN_S = 0.25
_SEQ_KEY = itemgetter(0)

KIND_TARGET = "target"
KIND_LOCAL = "local"


@dataclass(frozen=True, slots=True)
class OutageRule:
    """When a loss run is an outage: ``min_lost`` consecutive lost probes or more."""

    min_lost: int = DEFAULT_MIN_LOST

    def __post_init__(self) -> None:
        if not isinstance(self.min_lost, int) or self.min_lost < 1:
            raise ValueError(f"min_lost={self.min_lost!r}: give a whole number >= 1")

    def describe(self) -> str:
        return f"{self.min_lost} consecutive lost"


@dataclass(frozen=True, slots=True)
class Outage:
    """One outage. ``target`` None and ``kind`` 'local': our own network was down.
    ``end`` None: still going on. Times are Unix seconds."""

    target: str | None
    start: float
    end: float | None
    lost: int
    kind: str = KIND_TARGET
    rule: str = ""

    @property
    def duration_s(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "kind": self.kind,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "duration_s": None if self.end is None else round(self.end - self.start, 3),
            "lost": self.lost,
            "rule": self.rule,
        }


@dataclass(frozen=True, slots=True)
class OutageEvent:
    """An outage started (``what`` 'start', ``outage.end`` None) or ended ('end')."""

    what: str
    outage: Outage


@dataclass(frozen=True, slots=True)
class LossStats:
    """One target's loss pattern (see the module docstring for each definition)."""

    probes: int
    lost: int
    bursts: int  # loss runs (consecutive losses), the open one included
    burst_hist: dict[int, int]  # run length -> runs
    p: float | None  # Gilbert: P(lost | previous received)
    r: float | None  # Gilbert: P(received | previous lost)
    mean_burst: float | None  # mean loss-run length (probes)
    max_burst: int
    gmin: int
    rfc3611_bursts: int
    burst_density: float | None  # RFC 3611: lost / probes inside bursts
    gap_density: float | None  # RFC 3611: lost / probes in gaps
    outages: int  # started (ongoing included)

    @property
    def loss(self) -> float | None:
        return self.lost / self.probes if self.probes else None

    def to_dict(self) -> dict[str, object]:
        def r6(v: float | None) -> float | None:
            return None if v is None else round(v, 6)

        return {
            "probes": self.probes,
            "lost": self.lost,
            "loss": r6(self.loss),
            "bursts": self.bursts,
            "burst_hist": {str(k): v for k, v in sorted(self.burst_hist.items())},
            "gilbert_p": r6(self.p),
            "gilbert_r": r6(self.r),
            "mean_burst": r6(self.mean_burst),
            "max_burst": self.max_burst,
            "gmin": self.gmin,
            "rfc3611_bursts": self.rfc3611_bursts,
            "burst_density": r6(self.burst_density),
            "gap_density": r6(self.gap_density),
            "outages": self.outages,
        }


class _State:
    """One target's running state. Plain slots: this is touched per chunk."""

    __slots__ = (
        "probes", "lost", "run", "run_start", "run_last", "last_reply", "have_last",
        "rl", "lr", "hist", "max_run", "bursts",
        "since_loss", "g_lost", "g_total", "b_lost", "b_total", "b_count",
        "outage", "outages", "cut", "tail", "last_reply_send",
        "pending", "pend_timeout", "pend_iv", "useq", "have_seq", "wseq",
    )  # fmt: skip

    def __init__(self) -> None:
        self.probes = 0
        self.lost = 0
        self.run = 0  # consecutive losses so far (0: the last probe was received)
        self.run_start = 0.0  # send time of the run's first loss
        self.run_last = 0.0  # send time of its latest loss
        self.last_reply = True  # the last probe was received (or nothing yet)
        self.have_last = False
        self.rl = 0  # received -> lost transitions
        self.lr = 0  # lost -> received transitions
        self.hist: dict[int, int] = {}  # finished runs by length
        self.max_run = 0
        self.bursts = 0  # finished runs
        # RFC 3611 grouping
        self.since_loss = 1 << 30  # received since the last loss ("never": huge)
        self.g_lost = 0  # the current loss group: losses, probes first..last loss
        self.g_total = 0
        self.b_lost = 0  # closed groups that were bursts
        self.b_total = 0
        self.b_count = 0
        self.outage: Outage | None = None  # open outage (reported as started)
        self.outages = 0
        self.cut = False  # the open run was cut by our own network going down
        # the send time of the last reply: from the last chunk (read only when needed,
        # the fast path just keeps the chunk) or last_reply_send
        self.tail: bytes | None = None
        self.last_reply_send = math.nan
        # records held back until later ones are in: (seq, t, rtt, code)
        self.pending: list[tuple[int, float, float, int]] = []
        self.pend_timeout = 0.0
        self.pend_iv = 0.0
        self.useq = 0  # the last sequence number seen, unwrapped
        self.have_seq = False
        self.wseq = 0  # the last sequence number walked, unwrapped


class LossTracker:
    """Per-target loss state fed with outcome-log chunks; outage events out.

    ``feed_chunks(items, params)`` (a whole hand-over, as the engine calls it),
    ``feed_chunk(target, chunk, timeout_s, interval_s)`` and ``feed(target, t, rtt_ms,
    seq, codes, timeout_s)`` return the ``OutageEvent`` s the records revealed
    (starts and ends, in probe order); ``settle()`` walks what was held back for
    order (at stop). ``local_down(t)`` / ``local_up(t)`` mark our own network's
    outage (from the network monitor) and return its events. ``stats(target)``: the
    target's ``LossStats``.
    """

    def __init__(
        self,
        rule: OutageRule | None = None,
        *,
        gmin: int = DEFAULT_GMIN,
        local_grace_s: float = DEFAULT_LOCAL_GRACE_S,
    ) -> None:
        if gmin < 1:
            raise ValueError(f"gmin={gmin!r}: give a whole number >= 1 (RFC 3611: 16)")
        self.rule = rule or OutageRule()
        self.gmin = gmin
        self.local_grace_s = float(local_grace_s)
        self._rule_text = self.rule.describe()
        self._s: dict[str, _State] = {}
        self._local: Outage | None = None
        self.local_outages: list[Outage] = []  # ended ones (the open one is local_outage)
        self.outages_total = 0  # target outages started
        self.local_outages_total = 0
        self.outages_current = 0
        # agent-wide burst-length histogram: BURST_BUCKETS counts (not cumulative) + Inf
        self.burst_buckets = [0] * (len(BURST_BUCKETS) + 1)
        self.burst_sum = 0
        self.records = 0
        self.dropped_as_local = 0  # lost probes reassigned to our own outage

    # -- feeding -------------------------------------------------------------------

    def feed_chunk(
        self, target: str, chunk: bytes, timeout_s: float, interval_s: float = 0.0
    ) -> list[OutageEvent]:
        """One chunk (``fastping.chunk`` layout) of ``target``'s records; ``timeout_s``
        and ``interval_s`` (0: unknown) are the target's."""
        n = len(chunk) // RECORD_SIZE
        if n == 0:
            return []
        st = self._s.get(target)
        if st is None:
            st = self._s[target] = _State()
        codes = chunk[16 * n : 17 * n]
        self.records += n
        if st.run == 0 and not st.pending and _LOST_BYTE not in codes:
            # the common case: all received, no run open, nothing held back, and the
            # sequence numbers follow the last walked one without a hole (so no
            # timeout of an earlier probe can still come and belong before them)
            first = _I.unpack_from(chunk, 12 * n)[0]
            last = _I.unpack_from(chunk, 12 * n + 4 * (n - 1))[0]
            if not st.have_seq:  # the target's first chunk: it starts the numbering
                st.have_seq = True
                st.wseq = st.useq = first - 1
            if (first - st.wseq - 1) & 0xFFFF == 0 and (last - first) & 0xFFFF == n - 1:
                st.probes += n
                st.since_loss += n
                st.last_reply = True
                st.have_last = True
                st.tail = chunk
                st.wseq += n
                st.useq = st.wseq
                return []
        mv = memoryview(chunk)
        t = array("d")
        t.frombytes(mv[: 8 * n])
        rtt = array("f")
        rtt.frombytes(mv[8 * n : 12 * n])
        seq = array("i")
        seq.frombytes(mv[12 * n : 16 * n])
        if _SWAP:
            t.byteswap()
            rtt.byteswap()
            seq.byteswap()
        first = seq[0]
        if (
            st.have_seq
            and not st.pending
            and (first - st.wseq - 1) & 0xFFFF == 0
            and first + n <= 0x10000
            and seq == array("i", range(first, first + n))
        ):
            # in probe order already, right after the last walked one (the usual
            # case with an interval longer than the timeout): no sort, no hold
            st.wseq += n
            st.useq = st.wseq
            recs = zip(seq, t, rtt, codes, strict=True)
            return self._walk(target, st, recs, timeout_s, interval_s)
        return self._order(target, st, t, rtt, seq, codes, timeout_s, interval_s, False)

    def feed_chunks(
        self,
        items: Iterable[tuple[str, object, bytes]],
        params: Callable[[str], tuple[float, float]],
    ) -> list[OutageEvent]:
        """A whole hand-over, ``(target, _, chunk)`` each (the engine's items);
        ``params(target)`` gives its (timeout_s, interval_s), asked only for chunks
        that need more than the fast path. The fast path is inlined here: at 10,000
        targets it runs 1,000 times a second, and a method call is a third of it."""
        states = self._s
        lost = _LOST_BYTE
        unpack_i = _I.unpack_from
        out: list[OutageEvent] = []
        records = 0
        for target, _, chunk in items:
            n = len(chunk) // RECORD_SIZE
            st = states.get(target)
            if (
                st is not None
                and not st.run
                and not st.pending
                and st.have_seq
                and chunk.find(lost, 16 * n, 17 * n) < 0
            ):
                first = unpack_i(chunk, 12 * n)[0]
                if (first - st.wseq - 1) & 0xFFFF == 0 and (
                    unpack_i(chunk, 16 * n - 4)[0] - first
                ) & 0xFFFF == n - 1:
                    records += n
                    st.probes += n
                    st.since_loss += n
                    st.tail = chunk
                    st.wseq = st.useq = st.wseq + n
                    continue
            e = self.feed_chunk(target, chunk, *params(target))
            if e:
                out.extend(e)
        self.records += records
        return out

    def feed(
        self,
        target: str,
        t: Sequence[float],
        rtt_ms: Sequence[float],
        seq: Sequence[int],
        codes: bytes | Sequence[int],
        timeout_s: float,
        interval_s: float = 0.0,
    ) -> list[OutageEvent]:
        """Records as columns (record time, RTT ms or NaN, ICMP sequence, outcome code)."""
        st = self._s.get(target)
        if st is None:
            st = self._s[target] = _State()
        self.records += len(codes)
        return self._order(target, st, t, rtt_ms, seq, bytes(codes), timeout_s, interval_s, False)

    def settle(self) -> list[OutageEvent]:
        """Walk every record still held back (at stop, or offline at the end)."""
        out: list[OutageEvent] = []
        for target, st in self._s.items():
            if st.pending:
                out += self._order(target, st, (), (), (), b"", st.pend_timeout, st.pend_iv, True)
        return out

    def _order(
        self,
        target: str,
        st: _State,
        t: Sequence[float],
        rtt: Sequence[float],
        seq: Sequence[int],
        codes: bytes,
        timeout_s: float,
        interval_s: float,
        final: bool,
    ) -> list[OutageEvent]:
        """Records in probe order, then walked. The log is in the order outcomes became
        known: with an interval shorter than the timeout (or a timeout expired an
        expiry round late) a reply to probe k+1 is logged before the timeout of probe
        k. So records are sorted by sequence number (16 bits, wrapping), and while a
        loss run is open the last ``timeout_s + HOLD_MARGIN_S`` of sends are held back
        until the next hand-over: a timeout still to come may belong before them."""
        recs = st.pending
        st.pending = []
        if len(seq):
            # unwrap the 16-bit sequence numbers in logged order (near probe order:
            # within the probes a target has in flight)
            u = st.useq
            last = u & 0xFFFF if st.have_seq else seq[0]
            if not st.have_seq:
                u = last - 1  # the first record's key is its own sequence number
                last = u & 0xFFFF
                st.wseq = u  # nothing walked: "the one before the first"
                st.have_seq = True
            keys = []
            for q in seq:
                u += ((q - last + 32768) & 0xFFFF) - 32768
                last = q
                keys.append(u)
            st.useq = u
            recs.extend(zip(keys, t, rtt, codes, strict=True))
        if not recs:
            return []
        recs.sort(key=_SEQ_KEY)
        walk = recs
        if not final:
            # walk in sequence up to a hole whose probe may still be out (its
            # outcome not known yet): a hole older than timeout + margin before the
            # latest record is for good (a send error, a probe not sent)
            horizon = max(r[1] for r in recs) - timeout_s - HOLD_MARGIN_S
            expect = st.wseq + 1
            cut = len(recs)
            for i, r in enumerate(recs):
                if r[0] > expect:
                    sent = r[1] - (r[2] / 1000.0 if r[3] == _REPLY and r[2] == r[2] else timeout_s)
                    if sent > horizon:
                        cut = i
                        break
                expect = r[0] + 1
            if cut < len(recs):
                walk = recs[:cut]
                st.pending = recs[cut:]
                st.pend_timeout = timeout_s
                st.pend_iv = interval_s
        if walk:
            st.wseq = walk[-1][0]
        return self._walk(target, st, walk, timeout_s, interval_s)

    def _walk(
        self,
        target: str,
        st: _State,
        recs: Iterable[tuple[int, float, float, int]],
        timeout_s: float,
        interval_s: float = 0.0,
    ) -> list[OutageEvent]:
        out: list[OutageEvent] = []
        min_lost = self.rule.min_lost
        gmin = self.gmin
        for _seq, rt, r, c in recs:
            if c == _TIMEOUT:
                sent = rt - timeout_s
                if st.have_last and st.last_reply:
                    st.rl += 1
                if st.run == 0:
                    # a timeout is recorded when it expires (up to an expiry round
                    # late): the probe after the last reply, on schedule, is closer
                    if interval_s > 0 and st.have_last and st.last_reply:
                        prev = self._last_reply_send(st)
                        if prev == prev and prev + interval_s < sent:
                            sent = prev + interval_s
                    st.run_start = sent
                    st.cut = False
                st.run += 1
                st.run_last = sent
                st.lost += 1
                st.probes += 1
                st.last_reply = False
                st.have_last = True
                # RFC 3611 grouping
                if st.g_lost and st.since_loss < gmin:
                    st.g_lost += 1
                    st.g_total += st.since_loss + 1
                else:
                    self._close_group(st)
                    st.g_lost = 1
                    st.g_total = 1
                st.since_loss = 0
                if st.run == min_lost and st.outage is None:
                    o = Outage(target, st.run_start, None, st.run, KIND_TARGET, self._rule_text)
                    st.outage = o
                    st.outages += 1
                    self.outages_total += 1
                    self.outages_current += 1
                    out.append(OutageEvent("start", o))
            elif c == _REPLY:
                sent = rt - (r / 1000.0 if r == r else 0.0)
                if st.have_last and not st.last_reply:
                    st.lr += 1
                if st.run:
                    # walked in sequence: this is the probe right after the run (or
                    # after probes that never left), its send time exact (kernel)
                    self._end_run(st, sent, out)
                st.probes += 1
                st.since_loss += 1
                st.last_reply = True
                st.have_last = True
                st.last_reply_send = sent
                st.tail = None
            # other codes are not in the log; a caller feeding them is ignored
        return out

    @staticmethod
    def _last_reply_send(st: _State) -> float:
        tail = st.tail
        if tail is None:
            return st.last_reply_send
        n = len(tail) // RECORD_SIZE
        t = _D.unpack_from(tail, 8 * (n - 1))[0]
        r = _F.unpack_from(tail, 8 * n + 4 * (n - 1))[0]
        return float(t - r / 1000.0)

    def _close_group(self, st: _State) -> None:
        if st.g_lost >= 2:
            st.b_lost += st.g_lost
            st.b_total += st.g_total
            st.b_count += 1
        st.g_lost = 0
        st.g_total = 0

    def _end_run(self, st: _State, end: float, out: list[OutageEvent]) -> None:
        n = st.run
        st.hist[n] = st.hist.get(n, 0) + 1
        st.bursts += 1
        if n > st.max_run:
            st.max_run = n
        self.burst_buckets[bisect_left(BURST_BUCKETS, n)] += 1
        self.burst_sum += n
        o = st.outage
        if o is not None:
            st.outage = None
            self.outages_current -= 1
            out.append(OutageEvent("end", Outage(o.target, o.start, end, n, o.kind, o.rule)))
        st.run = 0

    # -- our own network -----------------------------------------------------------

    def local_down(self, t: float) -> list[OutageEvent]:
        """Our network went down at ``t``: open a local outage; targets' loss runs
        that began within ``local_grace_s`` before are ours, not theirs."""
        if self._local is not None:
            return []
        out = self.settle()  # what was held back happened before
        for st in self._s.values():
            if not st.run:
                continue
            if st.run_start >= t - self.local_grace_s:
                # those losses were ours: take the run back as if never seen as loss
                self.dropped_as_local += st.run
                st.lost -= st.run
                st.probes -= st.run
                if st.g_lost:
                    st.g_lost -= min(st.g_lost, st.run)
                    st.g_total = max(st.g_total - st.run, st.g_lost)
                if st.outage is not None:
                    o = st.outage
                    st.outage = None
                    st.outages -= 1
                    self.outages_total -= 1
                    self.outages_current -= 1
                    # the start was published: close it as nothing, at its own start
                    out.append(
                        OutageEvent(
                            "end",
                            Outage(o.target, o.start, o.start, 0, o.kind, "withdrawn: our network"),
                        )
                    )
                st.run = 0
                st.last_reply = True
            else:
                # a genuine outage that our own outage now hides: cut it here
                self._end_run(st, t, out)
            st.cut = True
            st.since_loss = 1 << 30
        o = Outage(None, t, None, 0, KIND_LOCAL, "network monitor: DOWN")
        self._local = o
        self.local_outages_total += 1
        out.append(OutageEvent("start", o))
        return out

    def local_up(self, t: float, lost: int = 0) -> list[OutageEvent]:
        """Our network is back at ``t``; ``lost``: probes recorded as local_down."""
        o = self._local
        if o is None:
            return []
        self._local = None
        done = Outage(None, o.start, t, lost, KIND_LOCAL, o.rule)
        self.local_outages.append(done)
        return [OutageEvent("end", done)]

    @property
    def local_outage(self) -> Outage | None:
        return self._local

    # -- reading -------------------------------------------------------------------

    def forget(self, target: str) -> list[OutageEvent]:
        """``target`` is no longer watched; an open outage of it ends unknown."""
        st = self._s.pop(target, None)
        if st is None or st.outage is None:
            return []
        self.outages_current -= 1
        o = st.outage
        return [OutageEvent("end", Outage(o.target, o.start, st.run_last, st.run, o.kind,
                                          o.rule + "; target removed"))]  # fmt: skip

    def targets(self) -> list[str]:
        return list(self._s)

    def current_outages(self) -> list[Outage]:
        """Targets' outages going on, each with the probes it has lost so far."""
        return [
            Outage(o.target, o.start, None, st.run, o.kind, o.rule)
            for st in self._s.values()
            if (o := st.outage) is not None
        ]

    def stats(self, target: str) -> LossStats | None:
        st = self._s.get(target)
        if st is None:
            return None
        hist = dict(st.hist)
        bursts = st.bursts
        max_run = st.max_run
        if st.run:  # the open run counts with its length so far
            hist[st.run] = hist.get(st.run, 0) + 1
            bursts += 1
            max_run = max(max_run, st.run)
        # transitions out of a probe exist for every probe but the last
        from_recv = st.probes - st.lost - (1 if st.have_last and st.last_reply else 0)
        from_lost = st.lost - (1 if st.have_last and not st.last_reply else 0)
        b_lost, b_total, b_count = st.b_lost, st.b_total, st.b_count
        if st.g_lost >= 2:  # the open group, as it stands
            b_lost += st.g_lost
            b_total += st.g_total
            b_count += 1
        gap_total = st.probes - b_total
        gap_lost = st.lost - b_lost
        return LossStats(
            probes=st.probes,
            lost=st.lost,
            bursts=bursts,
            burst_hist=hist,
            p=st.rl / from_recv if from_recv > 0 else None,
            r=st.lr / from_lost if from_lost > 0 else None,
            mean_burst=sum(k * v for k, v in hist.items()) / bursts if bursts else None,
            max_burst=max_run,
            gmin=self.gmin,
            rfc3611_bursts=b_count,
            burst_density=b_lost / b_total if b_total else None,
            gap_density=gap_lost / gap_total if gap_total > 0 else None,
            outages=st.outages,
        )


# ---------------------------------------------------------------------------------
# jitter


def rfc3550_jitter(rtt_ms: Iterable[float]) -> float | None:
    """RFC 3550 section 6.4.1 interarrival jitter over successive RTTs (ms), NaN
    (no reply) skipped: ``J += (|D| - J) / 16``. None with fewer than two."""
    j = 0.0
    prev = math.nan
    n = 0
    for r in rtt_ms:
        if r != r:
            continue
        if prev == prev:
            j += (abs(r - prev) - j) / 16.0
            n += 1
        prev = r
    return j if n else None


def ipdv(seq: Sequence[int], rtt_ms: Sequence[float]) -> list[float]:
    """RFC 3393 IPDV of each pair of probes consecutive in sequence (16-bit ICMP
    sequence numbers wrap) and both answered: ``RTT(i) - RTT(i-1)`` (ms, signed)."""
    out: list[float] = []
    for i in range(1, len(seq)):
        a, b = rtt_ms[i - 1], rtt_ms[i]
        if a == a and b == b and (seq[i] - seq[i - 1]) & 0xFFFF == 1:
            out.append(b - a)
    return out


def ipdv_quantiles(
    seq: Sequence[int], rtt_ms: Sequence[float], qs: Sequence[float] = (50.0, 95.0, 99.0)
) -> dict[str, float | None]:
    """Quantiles of ``|IPDV|`` (ms) as ``{"ipdv_p50_ms": ...}``; None when no pair."""
    v = sorted(abs(x) for x in ipdv(seq, rtt_ms))
    return {f"ipdv_p{q:g}_ms": percentile(v, q) for q in qs}


# ---------------------------------------------------------------------------------
# grouped views


@dataclass(frozen=True, slots=True)
class Incident:
    """Outages of several targets of one network starting within a window."""

    network: str
    start: float
    end: float | None  # the last of them to end; None while any is on
    outages: tuple[Outage, ...] = field(default_factory=tuple)

    @property
    def targets(self) -> list[str]:
        return sorted({o.target for o in self.outages if o.target is not None})

    def to_dict(self) -> dict[str, object]:
        return {
            "network": self.network,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "targets": self.targets,
            "outages": len(self.outages),
        }


def network_of(target: str, v4_prefix: int = 24, v6_prefix: int = 64) -> str | None:
    """The /24 (/64) a target address is in; None for a name."""
    try:
        a = ipaddress.ip_address(target)
    except ValueError:
        return None
    bits = v4_prefix if a.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{a}/{bits}", strict=False))


def group_incidents(
    outages: Iterable[Outage],
    *,
    window_s: float = 10.0,
    min_targets: int = 2,
    v4_prefix: int = 24,
    v6_prefix: int = 64,
    address_of: dict[str, str] | None = None,
) -> list[Incident]:
    """Target outages of one /24 (/64) whose starts are within ``window_s`` of the
    first one's, when at least ``min_targets`` targets share them: one incident.
    ``address_of`` maps names to addresses (targets given by name)."""
    by_net: dict[str, list[Outage]] = {}
    for o in outages:
        if o.kind != KIND_TARGET or o.target is None:
            continue
        addr = (address_of or {}).get(o.target, o.target)
        net = network_of(addr, v4_prefix, v6_prefix)
        if net is not None:
            by_net.setdefault(net, []).append(o)
    out: list[Incident] = []
    for net, group in by_net.items():
        group.sort(key=lambda o: o.start)
        i = 0
        while i < len(group):
            first = group[i].start
            j = i
            while j < len(group) and group[j].start - first <= window_s:
                j += 1
            members = group[i:j]
            if len({o.target for o in members}) >= min_targets:
                ends = [o.end for o in members]
                end = None if any(e is None for e in ends) else max(e for e in ends if e)
                out.append(Incident(net, first, end, tuple(members)))
            i = j
    out.sort(key=lambda inc: inc.start)
    return out


def find_outages(
    target: str,
    t: Sequence[float],
    rtt_ms: Sequence[float],
    seq: Sequence[int],
    codes: bytes | Sequence[int],
    timeout_s: float,
    rule: OutageRule | None = None,
) -> tuple[list[Outage], LossStats | None]:
    """Offline: every outage in one target's records (ended and still open) and its
    loss pattern, with the tracker the engine uses."""
    tr = LossTracker(rule)
    evs = tr.feed(target, t, rtt_ms, seq, codes, timeout_s)
    evs += tr.settle()
    done = [e.outage for e in evs if e.what == "end"]
    return done + tr.current_outages(), tr.stats(target)
