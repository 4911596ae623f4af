"""Prometheus metrics for a running ``MonitoringEngine``.

    engine = MonitoringEngine(...)
    server = serve_metrics(engine, "127.0.0.1:9374")   # GET /metrics
    ...
    server.close()

Two sets of metrics (``METRIC_NAMES`` lists them all):

* **smokeping_prober's**, with its names, label names and default histogram
  buckets, so dashboards built for smokeping_prober work unchanged:
  ``smokeping_requests_total``, ``smokeping_response_duration_seconds``,
  ``smokeping_response_ttl``, ``smokeping_response_duplicates_total``,
  ``smokeping_send_errors_total`` (labels ``ip``, ``host``, ``source``, ``tos``
  and then the targets' configured label names, sorted, as smokeping_prober
  builds them) and ``smokeping_receive_errors_total`` (no labels). When the run has
  targets of more than ICMP (``tcp://host:port``), ``kind`` ("icmp", "tcp") and
  ``port`` ("" for ICMP) follow the base labels on every per-target series and
  ``host`` is the host alone, so a host's ping and its ports are series side by side;
  a TCP series' histogram is of its open answers (SYN-ACKs), a closed port's RSTs
  count as requests and as ``fastping_results_total{outcome="closed"}``.
* **fastping's own**: ``fastping_results_total{outcome=...}`` per target for every
  outcome kind, socket receive drops / ENOBUFS / foreign packets, probes sent,
  event-loop lag, store queue depth and dropped writes, network state and the
  seconds spent in each, resource-guard throttling, and loss patterns
  (``fastping.loss``): ``fastping_outages_total`` (targets' outages started),
  ``fastping_outages_current`` (targets in an outage now), our own network's
  outages apart (``fastping_local_outages_total``, ``fastping_local_outage``)
  and ``fastping_loss_burst_length`` (a histogram of loss-run lengths, in probes).

How it is counted. Nothing is counted per probe in Python. The core already
counts every outcome per target slot, and keeps each slot's RTT histogram in C with
the buckets below (``set_rtt_buckets``); a scrape reads those counters
(``MonitoringEngine.counters``: the slots' counts plus the outcomes the engine made
itself, such as local_down and resolve errors) and turns them into metric families
there and then. So the engine stays in its quiet log mode with metrics on: replies
and timeouts are not returned to Python one by one. DNS targets are the exception:
their answers' rcodes are counted per answer by ``observe``, an engine observer of
DNS results only. (The benchmark compares this with ``Histogram.labels().observe``
per probe: see ``benchmarks/bench_metrics.py``.)

``smokeping_requests_total`` counts a probe when its outcome is known (reply,
timeout, unreachable, time exceeded, or a probe in flight while our network went
down), not when it leaves: ``requests - responses`` is then exactly the probes
lost, with no in-flight probes counted as loss between two scrapes. Over a run it
equals the engine's ``sent``.

Labels are bounded: one series set per configured target; ``host`` and the extra
labels come from configuration, ``ip`` from our own resolution of the target,
never from packets (a reply's source address or a router never becomes a label).
When a name re-resolves to another address its series moves to the new ``ip``
(counters restart there, which Prometheus handles as a new series).

Thread safety: the HTTP server answers in its own thread. It reads the core's
slots with the GIL held (a slot only while it is still its target's), keeps the
series it reads under its own lock, and only reads the observed (DNS) series the
event loop counts (list copies are atomic under the GIL); the histogram ``_count``
is derived from the buckets it read, so a scrape is always self-consistent.
"""

from __future__ import annotations

import math
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from ._pipeline import expo_lines
from .chunk import OUTCOME_CODE
from .errors import ConfigError, SocketError
from .logs import get_logger
from .results import (
    EV_CLOSED,
    EV_DUPLICATE,
    EV_REPLY,
    EV_SEND_ERROR,
    EV_TIME_EXCEEDED,
    EV_TIMEOUT,
    EV_UNREACHABLE,
    OUTCOME_BY_KIND,
    Outcome,
    ProbeResult,
)
from .settings import parse_listen as parse_listen  # re-exported: the grammar lives there

if TYPE_CHECKING:
    from .engine import EngineStats, LossStats, MonitoringEngine

DEFAULT_LISTEN = "127.0.0.1:9374"  # smokeping_prober's port, loopback only by default
# smokeping_prober's default buckets: prometheus.ExponentialBuckets(0.00005, 2, 20)
DEFAULT_BUCKETS_S: tuple[float, ...] = tuple(0.00005 * 2**i for i in range(20))

BASE_LABELS = ("ip", "host", "source", "tos")
_RESERVED_LABELS = frozenset(BASE_LABELS) | {"outcome", "le", "state", "job", "instance"}
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# fastping_results_total{outcome=...}: every kind a result can have, in the one
# numbering (results.EventKind: the core's kinds, the chunks' codes), so a series'
# counts are indexed by a kind as the core and the store number it. Every series
# exports OUTCOMES; ALL_OUTCOMES (with closed, the RSTs) those of kinds with ports.
ALL_OUTCOMES: tuple[Outcome, ...] = OUTCOME_BY_KIND
OUTCOMES: tuple[Outcome, ...] = OUTCOME_BY_KIND[:EV_CLOSED]
assert ALL_OUTCOMES[EV_CLOSED] is Outcome.CLOSED and len(ALL_OUTCOMES) == EV_CLOSED + 1
_N_ICMP_OUTCOMES = len(OUTCOMES)
# the kinds counted per result (observe) rather than read from the core at scrape time
OBSERVED_KINDS = frozenset({"dns"})  # the rcode of each answer
_log = get_logger("fastping.metrics")
# with targets of more than ICMP, every series has these after BASE_LABELS: the probe
# kind ("icmp", "tcp") and port ("" for ICMP); ``host`` is then the host alone
KIND_LABELS = ("kind", "port")
# with DNS targets, after KIND_LABELS: the server (address:port), the question's name
# and type ("" for the other kinds); their answers by rcode in fastping_dns_answers_total
DNS_LABELS = ("server", "name", "type")
_DNS_FAMILY = (
    "fastping_dns_answers",
    "DNS answers per target by rcode (NOERROR, NXDOMAIN, SERVFAIL, ...); truncated ones "
    "(TC) are counted in fastping_dns_truncated_total too.",
)
_DNS_TC_FAMILY = ("fastping_dns_truncated", "DNS answers per target with the TC bit set.")
# the families a run with DNS targets adds (beside METRIC_NAMES, as HTTP_METRIC_NAMES)
DNS_METRIC_NAMES = ("fastping_dns_answers_total", "fastping_dns_truncated_total")
_REPLY = Outcome.REPLY
_LOCAL_DOWN = Outcome.LOCAL_DOWN

NETWORK_STATES = ("unknown", "up", "degraded", "down")

# per-target families: (name without _total, type, help); smokeping_prober's help texts
_TARGET_FAMILIES = {
    "requests": ("smokeping_requests", "counter", "Number of ping requests sent"),
    "hist": (
        "smokeping_response_duration_seconds",
        "histogram",
        "A histogram of latencies for ping responses.",
    ),
    "ttl": ("smokeping_response_ttl", "gauge", "The last response Time To Live (TTL)."),
    "dup": (
        "smokeping_response_duplicates",
        "counter",
        "The number of duplicated response packets.",
    ),
    "send_err": (
        "smokeping_send_errors",
        "counter",
        "The number of errors when Pinger attempts to send packets.",
    ),
    "results": (
        "fastping_results",
        "counter",
        "Probe results per target and outcome (duplicate and late replies counted apart).",
    ),
}

METRIC_NAMES = (
    "smokeping_requests_total",
    "smokeping_response_duration_seconds",
    "smokeping_response_ttl",
    "smokeping_response_duplicates_total",
    "smokeping_receive_errors_total",
    "smokeping_send_errors_total",
    "fastping_results_total",
    "fastping_targets",
    "fastping_probes_sent_total",
    "fastping_probes_outstanding",
    "fastping_socket_receive_drops_total",
    "fastping_socket_enobufs_total",
    "fastping_socket_foreign_packets_total",
    "fastping_socket_malformed_packets_total",
    "fastping_socket_stale_replies_total",
    "fastping_socket_events_lost_total",
    "fastping_event_loop_lag_seconds",
    "fastping_event_loop_lag_max_seconds",
    "fastping_event_loop_lag_seconds_total",
    "fastping_engine_ticks_total",
    "fastping_probe_send_lateness_seconds",
    "fastping_store_queue_depth",
    "fastping_store_written_total",
    "fastping_store_dropped_total",
    "fastping_store_write_failures_total",
    "fastping_store_submit_errors_total",
    "fastping_subscriber_dropped_total",
    "fastping_network_state",
    "fastping_network_state_seconds_total",
    "fastping_guard_interval_factor",
    "fastping_guard_throttled",
    "fastping_guard_throttle_steps_total",
    "fastping_guard_throttled_seconds_total",
    "fastping_guard_cpu_percent",
    "fastping_guard_rss_bytes",
    "fastping_metrics_ignored_labels_total",
    "fastping_outages_total",
    "fastping_outages_current",
    "fastping_local_outages_total",
    "fastping_local_outage",
    "fastping_loss_burst_length",
)


# ---------------------------------------------------------------------------------
# listen address


def _requests(c: Sequence[int], s: _Series) -> int:
    """smokeping_requests_total of a series: probes with a final outcome (a closed
    port's RST is one, and not a response: requests - responses = lost + closed)."""
    return (
        c[EV_REPLY] + c[EV_TIMEOUT] + c[EV_UNREACHABLE] + c[EV_TIME_EXCEEDED] + c[EV_CLOSED]
        + s.sent_down
    )  # fmt: skip


def _labels_ok(name: str) -> bool:
    return bool(_LABEL_RE.match(name)) and not name.startswith("__")


# ---------------------------------------------------------------------------------
# per-target counters


class _Series:
    """Counters of one target (one set of label values)."""

    __slots__ = (
        "host", "ip", "values", "lab", "labb", "counts", "buckets", "rtt_sum_ms", "ttl",
        "sent_down", "n_out", "rcodes", "tc",
    )  # fmt: skip

    def __init__(
        self,
        host: str,
        ip: str,
        names: tuple[str, ...],
        values: tuple[str, ...],
        n_buckets: int,
        n_out: int = _N_ICMP_OUTCOMES,
    ) -> None:
        self.host = host
        self.n_out = n_out  # fastping_results_total outcomes it exports (OUTCOMES[:n_out])
        self.ip = ip
        self.values = values  # label values, in MetricsCollector.label_names order
        # the label pairs as exposition text, escaped once here, not at every scrape
        self.lab = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(names, values, strict=True))
        self.labb = self.lab.encode()
        self.counts = [0] * len(ALL_OUTCOMES)
        self.buckets = [0] * (n_buckets + 1)  # per bucket (not cumulative); last: +Inf
        self.rtt_sum_ms = 0.0
        self.ttl = 0  # last reply's TTL (0 before the first, as smokeping_prober)
        self.sent_down = 0  # local_down results of probes that had left (seq >= 0)
        # DNS targets: answers by rcode name and with TC (None: not a DNS target)
        self.rcodes: dict[str, int] | None = None
        self.tc = 0


class _StateClock:
    """Seconds spent in each state, for ``*_seconds_total`` counters."""

    def __init__(self, states: Iterable[str], state: str) -> None:
        self.totals = dict.fromkeys(states, 0.0)
        self.state = state
        self.since = time.monotonic()
        self._lock = threading.Lock()  # updated by the loop and by scrapes

    def update(self, state: str) -> dict[str, float]:
        with self._lock:
            now = time.monotonic()
            self.totals[self.state] = self.totals.get(self.state, 0.0) + (now - self.since)
            self.since = now
            self.state = state
            self.totals.setdefault(state, 0.0)
            return dict(self.totals)


def _network_state(engine: MonitoringEngine) -> str:
    from .engine.contracts import network_state

    name = network_state(engine.network)
    return name if name in NETWORK_STATES else "unknown"


SERIES_PER_PIECE = 1_000  # render_chunks(): series per piece (~2 MB of histogram lines)
_CLOSE_TAIL = [b"} "]  # after a series' labels, before its value


class MetricsCollector(Collector):
    """A prometheus_client ``Collector`` reading a ``MonitoringEngine``.

    ``attach()`` (done by the constructor unless ``attach=False``) has the engine
    keep RTT buckets per slot and registers ``observe`` as an engine observer of DNS
    results (of every result with ``observe_all``, or when the engine keeps other
    buckets already: then ``observe`` counts every result, as results fed to it by
    hand are). ``source`` and ``tos`` fill the
    smokeping_prober labels of the same names. ``label_names``: the configured
    target labels to export (default: every label name the engine's targets have
    now, sorted); labels of later targets outside this set are not exported and
    are counted in ``fastping_metrics_ignored_labels_total`` (a label set must not
    change under a running series).
    """

    def __init__(
        self,
        engine: MonitoringEngine,
        *,
        buckets_s: Sequence[float] = DEFAULT_BUCKETS_S,
        source: str = "",
        tos: int = 0,
        label_names: Iterable[str] | None = None,
        shard: tuple[int, int] | None = None,
        attach: bool = True,
        kind_labels: bool | None = None,
        dns_labels: bool | None = None,
        observe_all: bool = False,
    ) -> None:
        self.engine = engine
        self._set_buckets(buckets_s)
        self.source = str(source)
        self.tos = str(int(tos))
        self.shard = shard
        self._set_labels(label_names, kind_labels, dns_labels)
        self._series: dict[str, _Series] = {}  # observed (DNS) series, the loop's
        self._series_list: list[_Series] = []
        self._scraped: dict[str, _Series] = {}  # read from the core at scrape time
        self._scrape_lock = threading.Lock()
        self._observe_all = bool(observe_all)  # count every result, read nothing at scrape
        self._prune = False
        self.ignored_labels = 0
        self._warned_labels: set[str] = set()
        self._net_clock = _StateClock(NETWORK_STATES, _network_state(engine))
        self._throttle_clock = _StateClock(("0", "1"), "1" if engine.guard.throttled else "0")
        self._attached = False
        self._clocks_due = 0.0
        self._engine_registry = CollectorRegistry(auto_describe=False)
        self._engine_registry.register(_EngineOnly(self))
        self._more: list[Collector] = []
        if attach:
            self.attach()
        for info in engine.targets():  # series from the start, before any result
            if self._observe_all or info.kind in OBSERVED_KINDS:
                self._new_series(info.host, info.address)
        paths = getattr(engine, "paths", None)
        if paths is not None:  # the engine traces its targets (trace_every_s)
            self.add_collector(PathMetricsCollector(paths))

    def _set_buckets(self, buckets_s: Sequence[float]) -> None:
        bounds = [float(b) for b in buckets_s]
        if not bounds or any(b <= 0 for b in bounds) or sorted(set(bounds)) != bounds:
            raise ConfigError(
                f"buckets {list(buckets_s)!r}: give increasing positive upper bounds in seconds"
            )
        self.buckets_s = tuple(bounds)
        self._bounds_ms = [b * 1000.0 for b in bounds]
        # `le` spelt as Go spells floats, as smokeping_prober's are (5e-05, 0.0001, ...)
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._le_tails = [f',le="{le}"}} '.encode() for le in self._les]
        self._outcome_tails = [f',outcome="{o.value}"}} '.encode() for o in ALL_OUTCOMES]

    def _set_labels(
        self,
        label_names: Iterable[str] | None,
        kind_labels: bool | None,
        dns_labels: bool | None,
    ) -> None:
        """The label set of every per-target series (fixed for the collector's life)."""
        infos = self.engine.targets()
        if label_names is None:
            label_names = {k for info in infos for k in info.labels}
        if kind_labels is None:  # ICMP alone: smokeping_prober's label set, unchanged
            kind_labels = any(info.kind != "icmp" for info in infos)
        if dns_labels is None:
            dns_labels = any(info.kind == "dns" for info in infos)
        self.dns_labels = bool(dns_labels)
        self.kind_labels = bool(kind_labels) or self.dns_labels
        reserved = _RESERVED_LABELS | (set(KIND_LABELS) if self.kind_labels else set())
        if self.dns_labels:
            reserved |= {*DNS_LABELS, "rcode"}
        extra = sorted(set(label_names))
        for name in extra:
            if not _labels_ok(name) or name in reserved:
                raise ConfigError(
                    f"target label {name!r} cannot be a Prometheus label: use letters, digits "
                    f"and '_' (not starting with a digit or '__'), and none of "
                    f"{', '.join(sorted(reserved))}"
                )
        kinds: tuple[str, ...] = KIND_LABELS if self.kind_labels else ()
        kinds += DNS_LABELS if self.dns_labels else ()
        self.label_names: tuple[str, ...] = BASE_LABELS + kinds + tuple(extra)
        self._extra = tuple(extra)

    # -- engine side (event loop thread) -------------------------------------------

    def attach(self) -> None:
        if not self._attached:
            # one set of buckets per engine: when another collector's differ, this one
            # counts every result itself, as observers do
            if not self._observe_all:
                self._observe_all = not self.engine.set_rtt_buckets(self.buckets_s)
            kinds = None if self._observe_all else OBSERVED_KINDS
            self.engine.add_observer(self.observe, kinds)
            self.engine.add_tick_listener(self._tick)
            self._attached = True

    def detach(self) -> None:
        if self._attached:
            self.engine.remove_observer(self.observe)
            self.engine.remove_tick_listener(self._tick)
            self._attached = False

    def _tick(self) -> None:
        """At every engine tick (event loop): the state clocks, twice a second."""
        now = time.monotonic()
        if now >= self._clocks_due:
            self._clocks_due = now + 0.5
            self._net_clock.update(_network_state(self.engine))
            self._throttle_clock.update("1" if self.engine.guard.throttled else "0")

    def _new_series(self, host: str, address: str | None) -> _Series | None:
        """An observed series (event loop): counted by ``observe``."""
        engine = self.engine
        if host not in engine:
            return None  # removed while its last probes were out: nothing to label
        info = engine.target(host)
        s = self._make_series(host, address or "", info.kind, info.port, info.labels)
        self._series[host] = s
        # a new list, not an append under a scrape's feet: readers copy the reference
        self._series_list = [x for x in self._series_list if x.host != host] + [s]
        return s

    def _make_series(
        self, host: str, ip: str, kind: str, port: int, labels: dict[str, str]
    ) -> _Series:
        for k in labels:
            if k not in self._extra and k not in self._warned_labels:
                self._warned_labels.add(k)
                self.ignored_labels += 1
                _log.warning(
                    "target label not exported as a metric label (not known when metrics started)",
                    target=host,
                    label=k,
                )
        n_out = _N_ICMP_OUTCOMES if kind == "icmp" else len(ALL_OUTCOMES)
        if self.kind_labels:
            from .targets import split_kind

            # the host as configured, its kind and port beside it
            kinds: tuple[str, ...] = (kind, str(port) if port else "")
            kt = split_kind(host)
            shown = kt.host
            if self.dns_labels:
                h = f"[{kt.host}]" if ":" in kt.host else kt.host
                kinds += (f"{h}:{kt.port}", kt.qname, kt.qtype) if kt.qname else ("", "", "")
            elif kind == "dns":
                shown = host  # no name/type labels in this run: the whole dns:// URL
        else:
            # a TCP target added to a run that started with ICMP alone: its host label
            # is the whole tcp://host:port, so it never merges into the host's ICMP series
            kinds, shown = (), host
        values = (
            ip, shown, self.source, self.tos, *kinds, *(labels.get(k, "") for k in self._extra)
        )  # fmt: skip
        s = _Series(host, ip, self.label_names, values, len(self._bounds_ms), n_out)
        if kind == "dns":
            s.rcodes = {}
        return s

    def _refresh(self) -> list[_Series]:
        """The series read from the core (scrape side, any thread): every target of
        the engine but the observed kinds, in the engine's order, each with what its
        slot and the engine counted since its address was set (a new address: a new
        series, as Prometheus expects when ``ip`` changes)."""
        if self._observe_all:
            return []
        n_b = len(self._bounds_ms) + 1
        with self._scrape_lock:
            old = self._scraped
            new: dict[str, _Series] = {}
            for c in self.engine.counters(OBSERVED_KINDS):
                s = old.get(c.host)
                if s is None or (c.address is not None and c.address != s.ip):
                    s = self._make_series(c.host, c.address or "", c.kind, c.port, c.labels)
                s.counts = c.counts
                b = c.buckets
                s.buckets = b if b is not None and len(b) == n_b else [0] * n_b
                s.rtt_sum_ms = c.rtt_sum_ns / 1e6
                s.ttl = c.ttl
                s.sent_down = c.sent_down
                new[c.host] = s
            self._scraped = new
            return list(new.values())

    def observe(self, results: Sequence[ProbeResult]) -> None:
        """Count a batch of results (the engine calls this; keep it lean)."""
        if self._prune:
            self._do_prune()
        series = self._series
        bounds = self._bounds_ms
        for r in results:
            s = series.get(r.target)
            a = r.address
            if s is None or (a is not None and a != s.ip):
                s = self._new_series(r.target, a)
                if s is None:
                    continue
            o = r.outcome
            if o is _REPLY:
                rtt = r.rtt_ms
                s.counts[EV_REPLY] += 1
                if rtt is not None:
                    s.buckets[bisect_left(bounds, rtt)] += 1
                    s.rtt_sum_ms += rtt
                if s.rcodes is not None:
                    self._dns_answer(s, r.ttl)
                elif r.ttl:
                    s.ttl = r.ttl
            else:
                s.counts[OUTCOME_CODE[o]] += 1
                if o is _LOCAL_DOWN and r.seq >= 0:
                    s.sent_down += 1

    @staticmethod
    def _dns_answer(s: _Series, code: int | None) -> None:
        """A DNS reply: its TTL byte is the answer's rcode and TC (dnscodec)."""
        from .dnscodec import rcode_name, read_answer_code

        rc = read_answer_code(code)
        name = "UNKNOWN" if rc is None else rcode_name(rc[0])
        assert s.rcodes is not None
        s.rcodes[name] = s.rcodes.get(name, 0) + 1
        if rc is not None and rc[1]:
            s.tc += 1

    def _do_prune(self) -> None:
        self._prune = False
        engine = self.engine
        gone = [h for h in self._series if h not in engine]
        for h in gone:
            del self._series[h]
        if gone:
            self._series_list = list(self._series.values())

    # -- scrape side (HTTP thread) -------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: families depend on the run

    def _live(self) -> list[_Series]:
        engine = self.engine
        snap = self._series_list  # one reference read: a consistent list
        live = [s for s in snap if s.host in engine]
        if len(live) != len(snap):
            self._prune = True  # the loop thread rebuilds the map
        return self._refresh() + live

    def collect(self) -> Iterator[Metric]:
        """Metric families for a prometheus_client registry (``generate_latest``)."""
        names = self.label_names
        live = self._live()
        f = _TARGET_FAMILIES
        req = CounterMetricFamily(f["requests"][0], f["requests"][2], labels=names)
        hist = HistogramMetricFamily(f["hist"][0], f["hist"][2], labels=names)
        ttl = GaugeMetricFamily(f["ttl"][0], f["ttl"][2], labels=names)
        dup = CounterMetricFamily(f["dup"][0], f["dup"][2], labels=names)
        serr = CounterMetricFamily(f["send_err"][0], f["send_err"][2], labels=names)
        res = CounterMetricFamily(f["results"][0], f["results"][2], labels=(*names, "outcome"))
        les = self._les
        outcome_names = [o.value for o in ALL_OUTCOMES]
        for s in live:
            c = list(s.counts)
            b = list(s.buckets)
            values = list(s.values)
            req.add_metric(values, _requests(c, s))
            acc = 0
            cum = []
            for le, n in zip(les, b, strict=True):
                acc += n
                cum.append((le, acc))
            hist.add_metric(values, cum, s.rtt_sum_ms / 1000.0)
            ttl.add_metric(values, s.ttl)
            dup.add_metric(values, c[EV_DUPLICATE])
            serr.add_metric(values, c[EV_SEND_ERROR])
            for oname, n in zip(outcome_names[: s.n_out], c[: s.n_out], strict=True):
                res.add_metric([*values, oname], n)
        yield req
        yield hist
        yield ttl
        yield dup
        yield serr
        yield res
        dns = [s for s in live if s.rcodes is not None]
        if dns:
            ans = CounterMetricFamily(*_DNS_FAMILY, labels=(*names, "rcode"))
            tcs = CounterMetricFamily(*_DNS_TC_FAMILY, labels=names)
            for s in dns:
                assert s.rcodes is not None
                for rc, n in sorted(dict(s.rcodes).items()):
                    ans.add_metric([*s.values, rc], n)
                tcs.add_metric(list(s.values), s.tc)
            yield ans
            yield tcs
        yield from self.collect_engine()
        for more in self._more:
            yield from more.collect()

    def add_collector(self, c: Collector) -> None:
        """Serve ``c``'s families too (the HTTP checks' ``HttpMetricsCollector``)."""
        self._more.append(c)
        self._engine_registry.register(c)

    def render(self) -> bytes:
        """The whole scrape as one bytes object (see ``render_chunks``)."""
        return b"".join(self.render_chunks())

    def render_chunks(self) -> Iterator[bytes]:
        """The whole scrape in the Prometheus text format (0.0.4), formatted here.

        The same samples as ``collect`` + ``generate_latest`` (tests compare them), but
        the per-target lines are written in C (``_pipeline.expo_lines``) from label
        text escaped once per series: prometheus_client's generic path builds and
        formats a Sample object per line, about 0.3 s per 100,000 lines, and 10,000
        targets are 360,000 lines.

        Yielded in pieces of SERIES_PER_PIECE series (about 2 MB): 10,000 targets are
        ~38 MB of text, which the endpoint compresses piece by piece instead of holding
        it whole (three times over: the lines, their join, its encoding)."""
        from prometheus_client.exposition import generate_latest

        live = self._live()
        for key in _TARGET_FAMILIES:
            name, typ, doc = _TARGET_FAMILIES[key]
            n = name + "_total" if typ == "counter" else name
            yield f"# HELP {n} {doc}\n# TYPE {n} {typ}\n".encode()
            for i in range(0, len(live), SERIES_PER_PIECE):
                yield self._family_lines(key, n, live[i : i + SERIES_PER_PIECE])
        dns = [s for s in live if s.rcodes is not None]
        if dns:
            out: list[str] = []
            n = _DNS_FAMILY[0] + "_total"
            out.append(f"# HELP {n} {_DNS_FAMILY[1]}\n# TYPE {n} counter\n")
            for s in dns:
                assert s.rcodes is not None
                for rc, k in sorted(dict(s.rcodes).items()):
                    out.append(f'{n}{{{s.lab},rcode="{_escape(rc)}"}} {k}\n')
            n = _DNS_TC_FAMILY[0] + "_total"
            out.append(f"# HELP {n} {_DNS_TC_FAMILY[1]}\n# TYPE {n} counter\n")
            out.extend(f"{n}{{{s.lab}}} {s.tc}\n" for s in dns)
            yield "".join(out).encode()
        yield generate_latest(self._engine_registry)

    def _family_lines(self, key: str, n: str, part: list[_Series]) -> bytes:
        """One per-target family's lines (``n``: its full name) for these series."""
        if key == "hist":
            heads = [(n + "_bucket{").encode() + s.labb for s in part]
            buckets = [list(s.buckets) for s in part]  # one copy: buckets and count agree
            trailers = [
                f"{n}_sum{{{s.lab}}} {s.rtt_sum_ms / 1000.0!r}\n{n}_count{{{s.lab}}} {sum(b)}\n"
                .encode()
                for s, b in zip(part, buckets, strict=True)
            ]  # fmt: skip
            return expo_lines(heads, self._le_tails, buckets, True, trailers)
        nb = (n + "{").encode()
        heads = [nb + s.labb for s in part]
        if key == "results":
            rows = [list(s.counts)[: s.n_out] for s in part]
            return expo_lines(heads, self._outcome_tails, rows)
        if key == "requests":
            rows = [[_requests(s.counts, s)] for s in part]
        elif key == "ttl":
            rows = [[s.ttl] for s in part]
        elif key == "dup":
            rows = [[s.counts[EV_DUPLICATE]] for s in part]
        else:  # send_err
            rows = [[s.counts[EV_SEND_ERROR]] for s in part]
        return expo_lines(heads, _CLOSE_TAIL, rows)

    def collect_engine(self) -> Iterator[Metric]:
        """The agent-wide families (socket, loop, store, network, guard)."""
        st = self.engine.stats()
        yield from self._socket_families(st)
        yield from self._loop_families(st)
        yield from self._store_families(st)
        yield from self._network_families()
        yield from self._guard_families(st)
        yield from self._loss_families(st.get("loss"))
        yield _counter(
            "fastping_metrics_ignored_labels",
            "Target label names not exported (not configured when metrics started).",
            self.ignored_labels,
        )
        if self.shard is not None:
            shard = GaugeMetricFamily(
                "fastping_shard", "This agent's shard (index of count).", labels=("shard",)
            )
            shard.add_metric([f"{self.shard[0]}/{self.shard[1]}"], 1.0)
            yield shard

    @staticmethod
    def _socket_families(st: EngineStats) -> Iterator[Metric]:
        """Targets, probes and the socket's own counters."""
        sock = st.get("socket") or {}
        yield _counter(
            "smokeping_receive_errors",
            "The number of errors when Pinger attempts to receive packets.",
            sock.get("socket_errors", 0) + sock.get("malformed", 0),
        )
        yield _gauge("fastping_targets", "Targets this agent watches.", st["targets"])
        yield _counter(
            "fastping_probes_sent",
            "Probes the kernel accepted (rate() of it: probes sent per second).",
            st["sent"],
        )
        yield _gauge(
            "fastping_probes_outstanding", "Probes sent with no outcome yet.", st["outstanding"]
        )
        for key, name, doc in (
            ("rx_drops", "receive_drops", "Packets the kernel dropped: socket buffer full "
             "(SO_RXQ_OVFL). These look like loss."),
            ("enobufs", "enobufs", "Sends refused with ENOBUFS (local queue full)."),
            ("foreign", "foreign_packets", "ICMP packets read that were not ours."),
            ("malformed", "malformed_packets", "Packets read that could not be parsed."),
            ("stale", "stale_replies", "Replies for targets no longer watched."),
            ("events_lost", "events_lost", "Core events lost (event buffer full)."),
        ):  # fmt: skip
            yield _counter(f"fastping_socket_{name}", doc, sock.get(key, 0))

    def _loop_families(self, st: EngineStats) -> Iterator[Metric]:
        """The engine's tick lag and the probes' send lateness."""
        lag = st["loop_lag_s"]
        ticks = st["ticks"]
        yield _gauge(
            "fastping_event_loop_lag_seconds",
            "How late the engine's last tick ran.",
            lag["last"],
        )
        yield _gauge("fastping_event_loop_lag_max_seconds", "The latest tick so far.", lag["max"])
        yield _counter(
            "fastping_event_loop_lag_seconds",
            "Sum of tick lateness (rate() / rate(fastping_engine_ticks_total) = mean lag).",
            lag["mean"] * ticks,
        )
        yield _counter("fastping_engine_ticks", "Engine ticks.", ticks)
        # the prober's own timing: how late each probe left against its tick (kernel
        # TX timestamp - schedule), so prober noise is told apart from network jitter
        lat = self.engine.send_lateness()
        h = HistogramMetricFamily(
            "fastping_probe_send_lateness_seconds",
            "How late each probe left against its schedule (its kernel TX timestamp minus "
            "the time its tick was due): the prober's own timing noise.",
        )
        h.add_metric([], lat.prometheus_buckets(), lat.sum_ns / 1e9)
        yield h

    @staticmethod
    def _store_families(st: EngineStats) -> Iterator[Metric]:
        """The store's queue and writes, and the events subscribers lost."""
        store = st.get("store") or {}
        yield _gauge(
            "fastping_store_queue_depth",
            "Results accepted by the store and not yet written.",
            store.get("queued", 0),
        )
        yield _counter("fastping_store_written", "Results written to the store.",
                       store.get("written", 0))  # fmt: skip
        yield _counter(
            "fastping_store_dropped",
            "Results the store could not keep (queue full while writes failed).",
            store.get("dropped", 0),
        )
        yield _counter(
            "fastping_store_write_failures", "Failed store writes (retried).",
            store.get("write_failures", 0),
        )  # fmt: skip
        yield _counter(
            "fastping_store_submit_errors",
            "Result batches the store refused.",
            st.get("store_submit_errors", 0),
        )
        yield _counter(
            "fastping_subscriber_dropped",
            "Events slow subscribers lost (oldest first).",
            st.get("subscriber_dropped", 0),
        )

    def _network_families(self) -> Iterator[Metric]:
        """This host's own network state and the time spent in each."""
        state = _network_state(self.engine)
        totals = self._net_clock.update(state)
        g = GaugeMetricFamily(
            "fastping_network_state",
            "This host's own network state (1 for the current state).",
            labels=("state",),
        )
        t = CounterMetricFamily(
            "fastping_network_state_seconds",
            "Seconds spent in each network state since the exporter started.",
            labels=("state",),
        )
        for name in NETWORK_STATES:
            g.add_metric([name], 1.0 if name == state else 0.0)
            t.add_metric([name], totals.get(name, 0.0))
        yield g
        yield t

    def _guard_families(self, st: EngineStats) -> Iterator[Metric]:
        """The resource guard: throttling and the CPU and memory it last saw."""
        guard = st.get("guard") or {}
        throttled = self.engine.guard.throttled
        gt = self._throttle_clock.update("1" if throttled else "0")
        yield _gauge(
            "fastping_guard_interval_factor",
            "Resource guard's stretch of every probe interval (1 = not throttled).",
            st["interval_factor"],
        )
        yield _gauge(
            "fastping_guard_throttled",
            "1 while the resource guard slows probing.",
            1.0 if throttled else 0.0,
        )
        yield _counter(
            "fastping_guard_throttle_steps",
            "How often the resource guard slowed probing further.",
            guard.get("throttle_steps", 0),
        )
        yield _counter(
            "fastping_guard_throttled_seconds",
            "Seconds spent throttled by the resource guard.",
            gt.get("1", 0.0),
        )
        cpu = guard.get("cpu_percent")
        rss = guard.get("rss_mb")
        if cpu is not None:
            yield _gauge(
                "fastping_guard_cpu_percent", "CPU use at the guard's last check (% of one core).",
                cpu,
            )  # fmt: skip
        if rss is not None:
            yield _gauge(
                "fastping_guard_rss_bytes", "Resident memory at the guard's last check.",
                rss * 1024 * 1024,
            )  # fmt: skip

    @staticmethod
    def _loss_families(loss: LossStats | None) -> Iterator[Metric]:
        """Outages and loss-run lengths (the engine's LossTracker; nothing when the
        engine runs without it)."""
        if not loss:
            return
        from .loss import BURST_BUCKETS

        yield _counter(
            "fastping_outages", "Target outages started (see --outage-after); our own "
            "network's are counted apart.", loss["outages_total"],
        )  # fmt: skip
        yield _gauge(
            "fastping_outages_current", "Targets in an outage now.", loss["outages_current"]
        )
        yield _counter(
            "fastping_local_outages",
            "Outages of this host's own network (network monitor DOWN): never a target's.",
            loss["local_outages_total"],
        )
        yield _gauge(
            "fastping_local_outage",
            "1 while this host's own network is down.",
            1.0 if loss["local_outage"] else 0.0,
        )
        counts = loss["burst_buckets"]
        cum = 0
        buckets: list[tuple[str, float]] = []
        for le, c in zip((*map(float, BURST_BUCKETS), math.inf), counts, strict=True):
            cum += c
            buckets.append(("+Inf" if le == math.inf else str(int(le)), float(cum)))
        h = HistogramMetricFamily(
            "fastping_loss_burst_length",
            "Finished runs of consecutive lost probes, by length (probes), all targets.",
        )
        h.add_metric([], buckets, float(loss["burst_sum"]))
        yield h


# the path watcher's (fastping.pathwatch), when the engine traces (trace_every_s)
PATH_METRIC_NAMES = (
    "fastping_trace_hops",
    "fastping_path_changes_total",
    "fastping_path_mtu_bytes",
    "fastping_path_black_hole",
)


class PathMetricsCollector(Collector):
    """Per traced target: ``fastping_trace_hops{target}`` (hops to it in its latest
    trace, NaN when that trace did not reach it) and
    ``fastping_path_changes_total{target}`` (path changes this agent saw). Reads the
    watcher's dicts, copied at once (the metrics thread)."""

    def __init__(self, paths: Any) -> None:
        self.paths = paths

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        hops = GaugeMetricFamily(
            "fastping_trace_hops",
            "Hops to the target in its latest trace (NaN: the trace did not reach it).",
            labels=("target",),
        )
        changes = CounterMetricFamily(
            "fastping_path_changes",
            "Path changes seen between consecutive traces of the target (a hop that did "
            "not answer is never one).",
            labels=("target",),
        )
        for target, hop_count, n in sorted(self.paths.snapshot()):
            hops.add_metric([target], math.nan if hop_count is None else float(hop_count))
            changes.add_metric([target], float(n))
        yield hops
        yield changes
        mtus = sorted(self.paths.mtu_snapshot())
        if not mtus:
            return
        mtu = GaugeMetricFamily(
            "fastping_path_mtu_bytes",
            "Largest don't-fragment echo that reached the target (IP header included), "
            "measured at its first trace and after each path change (NaN: none did).",
            labels=("target",),
        )
        hole = GaugeMetricFamily(
            "fastping_path_black_hole",
            "1 when big probes to the target vanish with no router saying why (a PMTUD "
            "black hole), else 0.",
            labels=("target",),
        )
        for target, pmtu, black in mtus:
            mtu.add_metric([target], math.nan if pmtu is None else float(pmtu))
            hole.add_metric([target], 1.0 if black else 0.0)
        yield mtu
        yield hole


class _EngineOnly(Collector):
    def __init__(self, owner: MetricsCollector) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        return self.owner.collect_engine()


def _escape(v: str) -> str:
    # exposition format: backslash, double quote and line feed are escaped in label values
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


# ---------------------------------------------------------------------------------
# the endpoint


class MetricsServer:
    """The HTTP endpoint: ``GET /metrics`` (and ``/``) in a daemon thread.

    ``registry`` is a registry of its own holding the collector (never the
    process-global default), for callers that want ``generate_latest(registry)``;
    the endpoint itself answers with ``collector.render()`` (same samples, faster),
    gzip-compressed when the scraper accepts it (Prometheus does)."""

    MAX_HANDLERS = 4  # concurrent connections served; more wait in the backlog
    CONN_TIMEOUT_S = 10.0  # a scraper that stalls mid-request is dropped after this
    # Scrapes within this long of a render share it (Prometheus scrapes every 15 s or
    # more; 200 scrapers at once then cost one render, not 200 renders of the GIL)
    CACHE_S = 1.0

    def __init__(self, collector: MetricsCollector, host: str, port: int) -> None:
        import socket
        from http.server import ThreadingHTTPServer

        self.collector = collector
        self._render_lock = threading.Lock()
        self._cached: dict[int, tuple[float, bytes]] = {}  # gzip? -> (made at, body)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.scrapes = 0
        self.last_scrape_s = 0.0
        handler = _handler_class(self)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET

        slots = threading.BoundedSemaphore(self.MAX_HANDLERS)

        class _Server(ThreadingHTTPServer):
            address_family = fam
            daemon_threads = True
            # a real backlog: a burst of scrapers waits in the kernel's accept queue
            # instead of being refused (socketserver's default is 5)
            request_queue_size = 1024

            def process_request(self, request: Any, client_address: Any) -> None:
                # at most MAX_HANDLERS threads: the rest wait in the backlog (was one
                # thread per connection: 200 scrapers, 200 threads and renders)
                slots.acquire()
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    slots.release()
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        try:
            self._httpd = _Server((host, port), handler)
        except OSError as e:
            collector.detach()  # nothing will read it: stop counting into it
            raise SocketError(
                f"cannot serve metrics on {host}:{port}: {e.strerror or e}; choose another "
                "address or port with --metrics HOST:PORT (or metrics.listen in the config)"
            ) from e
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fastping-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}/metrics"

    def exposition(self) -> bytes:
        """What a scrape returns now (Prometheus text format)."""
        return self.collector.render()

    def cached_body(self, gz: bool) -> bytes:
        """The scrape body, rendered at most once per CACHE_S whatever the number of
        scrapers (one render at a time: the others wait for it and share it)."""
        with self._render_lock:
            now = time.monotonic()
            key = 1 if gz else 0
            c = self._cached.get(key)
            if c is None or now - c[0] >= self.CACHE_S:
                self._cached.pop(key, None)  # let the old body go before the new is made
                if gz:
                    import zlib

                    # level 1: ~10x smaller, cheap; wbits 31: a gzip stream
                    z = zlib.compressobj(1, zlib.DEFLATED, 31)
                    parts = [z.compress(piece) for piece in self.collector.render_chunks()]
                    parts.append(z.flush())
                    body = b"".join(parts)
                else:
                    body = self.collector.render()
                c = self._cached[key] = (now, body)
            return c[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self.collector.detach()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler_class(server: MetricsServer) -> type[Any]:
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = server.CONN_TIMEOUT_S  # StreamRequestHandler sets it on the socket

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path not in ("/metrics", "/"):
                self._send(404, b"not found: metrics are at /metrics\n", "text/plain")
                return
            t0 = time.perf_counter()
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            try:
                body = server.cached_body(gz)
            except Exception as e:  # a scrape must say what went wrong, not hang up
                self._send(500, f"metrics failed: {e!r}\n".encode(), "text/plain")
                return
            # counted before the body goes out: a scraper that reads it sees itself counted
            server.scrapes += 1
            server.last_scrape_s = time.perf_counter() - t0
            self._send(200, body, "text/plain; version=0.0.4; charset=utf-8", gz)

        def _send(self, code: int, body: bytes, ctype: str, gz: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            if gz:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per scrape on stderr would drown the monitor's own output

    return Handler


def serve_metrics(
    engine: MonitoringEngine, listen: str = DEFAULT_LISTEN, **collector_options: Any
) -> MetricsServer:
    """Serve ``engine``'s metrics on ``listen`` (``HOST:PORT``; see ``parse_listen``)."""
    host, port = parse_listen(listen)
    return MetricsServer(MetricsCollector(engine, **collector_options), host, port)


# ---------------------------------------------------------------------------------
# HTTP checks, with blackbox_exporter's names


HTTP_METRIC_NAMES = (
    "probe_success",
    "probe_duration_seconds",
    "probe_dns_lookup_time_seconds",
    "probe_ip_protocol",
    "probe_http_duration_seconds",
    "probe_http_status_code",
    "probe_http_version",
    "probe_http_redirects",
    "probe_http_ssl",
    "probe_http_content_length",
    "probe_ssl_earliest_cert_expiry",
    "fastping_http_server_seconds",
    "fastping_http_path_seconds",
    "fastping_http_network_rtt_seconds",
    "fastping_http_checks_total",
)

# blackbox_exporter's phases (prober/http.go) from ours: processing is connection
# ready -> first byte, i.e. our send + wait
_BB_PHASES = (
    ("resolve", ("dns_ms",)),
    ("connect", ("connect_ms",)),
    ("tls", ("tls_ms",)),
    ("processing", ("send_ms", "wait_ms")),
    ("transfer", ("transfer_ms",)),
)


class HttpMetricsCollector(Collector):
    """The latest result of every (URL, address) of an ``HttpScheduler`` as
    blackbox_exporter's gauges, labelled ``url`` and ``ip`` (blackbox serves one
    probe per scrape; here one agent serves them all), plus counts per outcome.
    ``observe`` is the scheduler's sink (event loop); ``collect`` runs in the
    metrics thread and reads only the dict snapshot."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], Any] = {}
        self._counts: dict[tuple[str, str, str], int] = {}

    def observe(self, results: Sequence[Any]) -> None:
        latest = dict(self._latest)
        for r in results:
            key = (r.url, r.address or "")
            latest[key] = r
            ck = (r.url, r.address or "", r.outcome.value)
            self._counts[ck] = self._counts.get(ck, 0) + 1
        self._latest = latest  # one reference swap: the scrape thread sees a whole dict

    def keep_only(self, urls: Iterable[str]) -> None:
        """Drop the series of URLs no longer checked (a reload removed them)."""
        keep = set(urls)
        self._latest = {k: v for k, v in self._latest.items() if k[0] in keep}
        self._counts = {k: v for k, v in self._counts.items() if k[0] in keep}

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        latest = self._latest
        lab = ("url", "ip")
        g = _http_gauges(lab)
        phases = GaugeMetricFamily(
            "probe_http_duration_seconds",
            "Duration of http request by phase (of the last request of a redirect chain)",
            labels=(*lab, "phase"),
        )
        for (url, ip), r in latest.items():
            _add_http_result(g, phases, [url, ip], r)
        yield from g.values()
        yield phases
        checks = CounterMetricFamily(
            "fastping_http_checks", "HTTP checks per URL, address and outcome",
            labels=(*lab, "outcome"),
        )  # fmt: skip
        for (url, ip, oc), n in list(self._counts.items()):
            checks.add_metric([url, ip, oc], n)
        yield checks


def _http_gauges(lab: tuple[str, ...]) -> dict[str, GaugeMetricFamily]:
    """The blackbox_exporter gauges (and fastping's server/path split) by name."""
    return {
        n: GaugeMetricFamily(n, d, labels=lab)
        for n, d in (
            ("probe_success", "Displays whether or not the probe was a success"),
            ("probe_duration_seconds",
             "Returns how long the probe took to complete in seconds"),
            ("probe_dns_lookup_time_seconds",
             "Returns the time taken for probe dns lookup in seconds"),
            ("probe_ip_protocol", "Specifies whether probe ip protocol is IP4 or IP6"),
            ("probe_http_status_code", "Response HTTP status code"),
            ("probe_http_version", "Returns the version of HTTP of the probe response"),
            ("probe_http_redirects", "The number of redirects"),
            ("probe_http_ssl", "Indicates if SSL was used for the final redirect"),
            ("probe_http_content_length", "Length of http content response"),
            ("probe_ssl_earliest_cert_expiry", "Returns last SSL chain expiry in unixtime"),
            ("fastping_http_server_seconds",
             "Server time to the first byte: wait minus the network RTT (docs/http.md)"),
            ("fastping_http_path_seconds", "Total time minus the server time (docs/http.md)"),
            ("fastping_http_network_rtt_seconds",
             "The network RTT the split used (ICMP of the address, else the TCP handshake's)"),
        )
    }  # fmt: skip


def _add_http_result(
    g: dict[str, GaugeMetricFamily], phases: GaugeMetricFamily, v: list[str], r: Any
) -> None:
    """One (URL, address)'s latest result ``r`` as samples labelled ``v`` ([url, ip])."""
    ip = v[1]
    g["probe_success"].add_metric(v, 1.0 if r.ok else 0.0)
    if r.total_ms is not None:
        g["probe_duration_seconds"].add_metric(v, r.total_ms / 1000.0)
    if r.dns_ms is not None:
        g["probe_dns_lookup_time_seconds"].add_metric(v, r.dns_ms / 1000.0)
    if ip:
        g["probe_ip_protocol"].add_metric(v, 6.0 if ":" in ip else 4.0)
    g["probe_http_status_code"].add_metric(v, float(r.status or 0))
    if r.http_version:
        g["probe_http_version"].add_metric(v, float(r.http_version.split("/")[-1]))
    g["probe_http_redirects"].add_metric(v, float(r.redirects))
    final = r.final_url or r.url
    g["probe_http_ssl"].add_metric(v, 1.0 if final.startswith("https:") else 0.0)
    g["probe_http_content_length"].add_metric(v, float(r.body_bytes))
    if r.cert_not_after is not None:
        g["probe_ssl_earliest_cert_expiry"].add_metric(v, r.cert_not_after)
    for name, attr in (("fastping_http_server_seconds", "server_ms"),
                       ("fastping_http_path_seconds", "path_ms"),
                       ("fastping_http_network_rtt_seconds", "rtt_ms")):  # fmt: skip
        x = getattr(r, attr)
        if x is not None:
            g[name].add_metric(v, x / 1000.0)
    for phase, attrs in _BB_PHASES:
        xs = [getattr(r, a) for a in attrs]
        phases.add_metric([*v, phase], sum(x for x in xs if x is not None) / 1000.0)
