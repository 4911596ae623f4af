"""The monitoring agent: engine, store, network watch and metrics built from a config.

``fastping monitor`` is this plus a command line and a terminal. A program that
wants the same monitoring without argparse builds an ``Agent`` from a
``FastpingConfig`` (``parse_config`` / ``load_config``, or ``Agent.from_file``)::

    import asyncio
    from fastping.agent import Agent
    from fastping.config import parse_config

    async def main() -> None:
        cfg = parse_config({"targets": ["127.0.0.1", "::1"],
                            "store": {"path": "/tmp/fastping.db"},
                            "metrics": {"listen": "127.0.0.1:0"}})
        async with Agent(cfg) as agent:  # started; stopped (results written) on exit
            await asyncio.sleep(5)
            print(agent.metrics.url, agent.engine.stats()["sent"])

    asyncio.run(main())

What the command line sets over the configuration (``--db``, ``--interval``,
``--metrics``, ...) is an ``AgentOptions``; the targets are the configuration's
(``targets:``, ``dns:``) unless the caller gives its own list. A configuration that
cannot run is refused by the constructor, before anything is opened
(``ConfigError``; ``PermissionDenied`` when a probe socket cannot be opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .config import FastpingConfig, is_url, load_config
from .errors import ConfigError, FastpingError

if TYPE_CHECKING:  # heavy imports stay inside start()
    from .engine import MonitoringEngine
    from .metrics import MetricsServer
    from .netstate import NetworkMonitor
    from .remote_write import RemoteWriter
    from .store import ResultStore

DEFAULT_DB = "fastping.db"
MAX_EXPANDED = 1 << 20  # addresses one CIDR block / range may expand to
# at stop the engine gives the store stop_timeout_s to write; close() then waits at
# most this much more before counting what is left as dropped
STORE_CLOSE_S = 1.0


class AgentTarget(NamedTuple):
    """One target of the engine with its settings (defaults filled in)."""

    host: str  # as the engine names it: an address, a host name, tcp://HOST:PORT, ...
    interval_s: float
    timeout_s: float
    labels: dict[str, str]


@dataclass(frozen=True)
class AgentOptions:
    """What a caller sets over the configuration (``fastping monitor``'s flags).
    None (and the other defaults) leave the configuration's value."""

    db: str | None = None  # SQLite path or postgresql:// URL (store.path / store.url)
    agent: str | None = None  # name on a shared store's rows (store.agent)
    interval_s: float | None = None  # over defaults.interval_s and targets without one
    timeout_s: float | None = None  # over defaults.timeout_s and targets without one
    mode: str | None = None  # auto, raw, dgram, connect (mode)
    max_cpu_percent: float | None = None  # resources.max_cpu_percent
    max_memory_mb: float | None = None  # resources.max_memory_mb
    netstate: bool = False  # watch this host's network even without a network: section
    outage_after: int = 3  # consecutive lost probes that make an outage
    outage_webhook: str | None = None  # POST outage starts and ends here (JSON)
    trace_every_s: float | None = None  # trace.every_s
    trace_on_outage: bool = False  # trace.on_outage
    mtu_on_change: bool = False  # trace.mtu_on_change
    shard: tuple[int, int] | None = None  # (i, n), over the config's shard
    metrics_listen: str | None = None  # HOST:PORT (metrics.listen)
    resolver: str | None = None  # DNS server for host names (resolver)
    remote_write_url: str | None = None  # remote_write.url
    remote_write_interval_s: float | None = None  # remote_write.interval_s
    stop_timeout_s: float = 10.0  # at stop, how long the store may take the last results


def expand_target(text: str) -> list[str]:
    """One target text -> targets for the engine (blocks and ranges expanded, bounded;
    ``tcp://10.0.0.0/30:22`` is each address on port 22)."""
    from .targets import expand_kind_target

    return expand_kind_target(text, MAX_EXPANDED)


def config_targets(
    cfg: FastpingConfig, interval_s: float | None = None, timeout_s: float | None = None
) -> list[AgentTarget]:
    """The configuration's probe targets (HTTP checks are not), expanded, each with
    its settings; ``interval_s`` / ``timeout_s`` replace the defaults of the targets
    that do not set their own."""
    out: list[AgentTarget] = []
    for tc in cfg.targets:
        if is_url(tc.host):
            continue
        iv, to, _payload = cfg.target_settings(tc)
        if interval_s is not None and tc.interval_s is None:
            iv = interval_s
        if timeout_s is not None and tc.timeout_s is None:
            to = timeout_s
        out.extend(AgentTarget(h, iv, to, dict(tc.labels)) for h in expand_target(tc.label))
    return out


def select_targets(
    wanted: Iterable[AgentTarget], shard: tuple[int, int] | None
) -> tuple[list[AgentTarget], int]:
    """The targets to watch (the first of each host, this shard's share) and how many
    hosts were listed."""
    from .shard import shard_of

    seen: set[str] = set()
    listed: set[str] = set()
    targets = []
    for w in wanted:
        listed.add(w.host)
        if w.host not in seen and (shard is None or shard_of(w.host, shard[1]) == shard[0]):
            seen.add(w.host)
            targets.append(w)
    return targets, len(listed)


def shard_checks(checks: list[Any], shard: tuple[int, int] | None) -> list[Any]:
    """This shard's share of the HTTP checks."""
    if shard is None:
        return checks
    from .shard import shard_of

    return [c for c in checks if shard_of(c.url, shard[1]) == shard[0]]


def trace_options(cfg: FastpingConfig, opts: AgentOptions | None = None) -> dict[str, Any]:
    """The engine's trace settings: the options', else the config's trace: section."""
    tc = cfg.trace
    opts = opts or AgentOptions()
    every = opts.trace_every_s if opts.trace_every_s is not None else tc.every_s
    on_outage = bool(opts.trace_on_outage or tc.on_outage)
    mtu = bool(opts.mtu_on_change or tc.mtu_on_change)
    if every is None:
        if mtu:
            raise ConfigError(
                "--mtu-on-change (trace.mtu_on_change) needs --trace-every S (trace.every_s): "
                "the traces say when a path changed"
            )
        if on_outage:
            raise ConfigError(
                "--trace-on-outage (trace.on_outage) needs --trace-every S (trace.every_s): "
                "the regular traces give the path an outage's trace is compared with"
            )
        return {}
    return {
        "trace_every_s": every,
        "trace_options": {"max_ttl": tc.max_ttl, "timeout_s": tc.timeout_s,
                          "rate_pps": tc.rate_pps, "on_outage": on_outage,
                          "mtu_on_change": mtu},
    }  # fmt: skip


def check_probe_sockets(targets: Sequence[AgentTarget], mode: str) -> None:
    """The engine multiplexes every target through one socket per probe kind and
    family; the system ping cannot do that. So, before anything starts: a socket that
    cannot be opened (ICMP in auto mode: only the system ping would be left; TCP: no
    CAP_NET_RAW) is PermissionDenied saying what to do, as ``sweep --mode raw`` is."""
    import socket

    from .targets import Address, parse_target, split_kind

    needed: set[tuple[str, int]] = set()
    for t in targets:
        kt = split_kind(t.host)
        spec = parse_target(kt.host)[0]
        needed.add((kt.kind, spec.family if isinstance(spec, Address) else socket.AF_INET))
    for kind, fam in sorted(needed):
        if kind == "icmp":
            _check_icmp_socket(fam, mode)
        else:
            _check_kind_socket(kind, fam, mode)


def _check_icmp_socket(fam: int, mode: str) -> None:
    from .errors import PermissionDenied
    from .probe import UseSubprocess, open_icmp_socket

    try:
        open_icmp_socket(fam, mode=mode).close()
    except UseSubprocess as e:
        d = e.diagnosis
        why = f"{d.explain('raw')}.\n{d.explain('dgram')}." if d is not None else str(e)
        raise PermissionDenied(
            "the monitor needs an ICMP socket (raw or dgram; it cannot run on the system "
            f"ping) and none may be opened here.\n{why}\nRun `fastping doctor` for details."
        ) from None


def _check_kind_socket(kind: str, fam: int, mode: str = "auto") -> None:
    """A socket of a probe kind with ports (engine.SOCKET_KINDS), opened and closed
    (TCP in auto mode falls back to connect() timing, so only --mode raw can fail)."""
    from .engine import SOCKET_KINDS
    from .errors import PermissionDenied

    try:
        SOCKET_KINDS[kind](mode, {})(fam, 1).close()
    except PermissionError as e:
        raise PermissionDenied(
            f"{kind.upper()} targets need a raw socket in --mode raw, which needs root or "
            f"CAP_NET_RAW: {e.strerror or e}.\nGrant it (setcap cap_net_raw+ep on the python "
            "binary, or AmbientCapabilities=CAP_NET_RAW in the systemd unit), or use "
            "--mode auto / --mode connect (connect() timing, no privilege)."
        ) from None


def get_engine_logger() -> Any:
    from .logs import get_logger

    return get_logger("fastping.engine")


@dataclass(frozen=True)
class AgentSettings:
    """The configuration with the options over it: what the agent runs with."""

    db: str
    shared: bool  # db is a PostgreSQL URL
    agent: str | None  # the options' or store.agent; None: agent_name(shard) at start
    interval_s: float
    timeout_s: float
    mode: str
    shard: tuple[int, int] | None
    metrics_listen: str | None
    remote_write_url: str | None
    network: Any  # the network: section to watch with, or None
    trace: dict[str, Any]  # MonitoringEngine's trace keywords


def resolve_settings(cfg: FastpingConfig, opts: AgentOptions) -> AgentSettings:
    """Check that ``cfg`` with ``opts`` over it can run (ConfigError saying why not,
    before anything is opened) and return what the agent runs with."""
    from .store import is_postgres_url

    sc = cfg.store
    db = opts.db or sc.url or sc.path
    settings = AgentSettings(
        db=db,
        shared=is_postgres_url(db),
        agent=opts.agent or sc.agent,
        interval_s=opts.interval_s if opts.interval_s is not None else cfg.defaults.interval_s,
        timeout_s=opts.timeout_s if opts.timeout_s is not None else cfg.defaults.timeout_s,
        mode=opts.mode or cfg.mode,
        shard=opts.shard if opts.shard is not None else cfg.shard_index,
        metrics_listen=opts.metrics_listen or cfg.metrics.listen,
        remote_write_url=opts.remote_write_url or cfg.remote_write.url,
        network=cfg.network if cfg.network.model_fields_set or opts.netstate else None,
        trace={},
    )
    _check_settings(settings, opts)
    return replace(settings, trace=trace_options(cfg, opts))  # a bad combination refused


def _check_settings(s: AgentSettings, opts: AgentOptions) -> None:
    if s.metrics_listen:
        from .metrics import parse_listen

        parse_listen(s.metrics_listen, "metrics.listen")
    rw_url = s.remote_write_url
    if rw_url and not rw_url.startswith(("http://", "https://")):
        raise ConfigError(f"--remote-write {rw_url!r}: give an http:// or https:// URL")
    if rw_url:
        try:
            import cramjam  # noqa: F401
        except ImportError:
            raise ConfigError(
                "remote write needs snappy (cramjam): pip install 'fastping[remote-write]'"
            ) from None
    if s.shared:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"--db {s.db.split('://')[0]}://...: the PostgreSQL store needs psycopg 3: "
                "pip install 'fastping[postgresql]' (or 'psycopg[binary]')"
            ) from None
    for name, v in (("--interval", s.interval_s), ("--timeout", s.timeout_s)):
        if not v > 0:
            raise ConfigError(f"{name} {v!r}: give a positive number of seconds")
    if opts.outage_webhook:
        from .netstate import _webhook_url_problem

        why = _webhook_url_problem(opts.outage_webhook)
        if why:
            raise ConfigError(f"--outage-webhook {opts.outage_webhook!r}: {why}")
    if opts.outage_after < 1:
        raise ConfigError(
            f"--outage-after {opts.outage_after}: give how many consecutive lost probes make "
            "an outage, 1 or more (3 is usual)"
        )
    if s.mode == "subprocess":
        raise ConfigError(
            "mode 'subprocess' cannot run the monitor (it multiplexes every target through "
            "one socket): use auto, raw, dgram or connect, or grant CAP_NET_RAW"
        )


class Agent:
    """Engine, store, network watch, outage webhook, metrics endpoint, remote write,
    send-timing windows and HTTP checks of one configuration, started and stopped
    together.

    ``targets``: the probe targets (default: the configuration's, this shard's share;
    a configuration that lists none is a ConfigError). ``http_checks``: the HTTP
    checks (default: the configuration's, this shard's share). ``log``: the logger
    for the agent's own lines. ``check_sockets``: open and close a socket of every
    probe kind and family the targets need, so a missing privilege is
    PermissionDenied here rather than an error per target later.

    ``engine``, ``store``, ``network``, ``metrics`` and ``remote`` are there once
    ``start()`` has run (``network`` / ``metrics`` / ``remote`` None when off).
    """

    def __init__(
        self,
        cfg: FastpingConfig,
        options: AgentOptions | None = None,
        *,
        targets: Sequence[AgentTarget] | None = None,
        http_checks: Sequence[Any] | None = None,
        log: Any = None,
        check_sockets: bool = True,
    ) -> None:
        self.cfg = cfg
        self.options = opts = options if options is not None else AgentOptions()
        self.settings = s = resolve_settings(cfg, opts)
        checks = cfg.http_checks() if http_checks is None else list(http_checks)
        if http_checks is None:
            checks = shard_checks(checks, s.shard)
        self.http_checks: list[Any] = checks
        if targets is None:
            wanted = config_targets(cfg, opts.interval_s, opts.timeout_s)
            if not wanted and not checks:
                raise ConfigError("no targets: list some under 'targets:' in the configuration")
            targets = select_targets(wanted, s.shard)[0]
        self.initial_targets: list[AgentTarget] = [AgentTarget(*t) for t in targets]
        if check_sockets:
            check_probe_sockets(self.initial_targets, s.mode)
        if log is None:
            from .logs import get_logger

            log = get_logger("fastping.agent")
        self.log = log
        self.current: dict[str, AgentTarget] = {t.host: t for t in self.initial_targets}
        self.agent_name: str | None = s.agent
        self._engine: MonitoringEngine | None = None
        self._store: ResultStore | None = None
        self.network: NetworkMonitor | None = None
        self.metrics: MetricsServer | None = None
        self.remote: RemoteWriter | None = None
        self.resolver: Any = None
        self.http: HttpSide | None = None
        self._hook: Any = None
        self._timing: TimingRecorder | None = None
        self._timing_task: asyncio.Task[None] | None = None
        self._state = "new"  # -> started -> stopping -> stopped

    @classmethod
    def from_config(cls, cfg: FastpingConfig, **options: Any) -> Agent:
        """``Agent(cfg, AgentOptions(**options))``."""
        return cls(cfg, AgentOptions(**options))

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Agent:
        """The agent of a YAML configuration file (``load_config``), options over it."""
        return cls(load_config(path), AgentOptions(**options))

    @property
    def engine(self) -> MonitoringEngine:
        if self._engine is None:
            raise RuntimeError("the agent has not started: await agent.start() first")
        return self._engine

    @property
    def store(self) -> ResultStore:
        if self._store is None:
            raise RuntimeError("the agent has not started: await agent.start() first")
        return self._store

    @property
    def label_names(self) -> set[str]:
        """Every configured label name (a target added later cannot add one)."""
        return {k for t in self.initial_targets for k in t.labels}

    @property
    def first_round_s(self) -> float:
        """By when every initial target has had its first probe's outcome."""
        s, ts = self.settings, self.initial_targets
        return max([s.interval_s] + [t.interval_s for t in ts]) + max(
            [s.timeout_s] + [t.timeout_s for t in ts]
        )

    # -- life cycle ------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, watch the network, build and start the engine with the
        targets, then the metrics endpoint, remote write and HTTP checks. A part
        that fails to start stops the parts started before it, then raises."""
        if self._state != "new":
            raise RuntimeError(f"an agent starts once (this one is {self._state})")
        self._state = "started"
        try:
            self._warn_payloads()
            await self._start_store()
            await self._start_network()
            self._build_engine()
            self._start_outage_hook()
            self._start_metrics()
            self._start_remote_write()
            self._start_timing()
            if self.http_checks:
                self.http = await start_http(self.cfg, self.http_checks, self.engine,
                                             self.store, self.metrics, self.log,
                                             self.settings.interval_s,
                                             self.settings.timeout_s)  # fmt: skip
            await self.engine.start()
        except BaseException:
            await self.stop()
            raise

    def _warn_payloads(self) -> None:
        cfg = self.cfg
        payloads = {cfg.target_settings(tc)[2] for tc in cfg.targets}
        if len(payloads | {cfg.defaults.payload_size}) > 1:
            self.log.warning(
                "per-target payload_size is not supported by the monitor (one socket per "
                f"family); every target uses defaults.payload_size={cfg.defaults.payload_size}"
            )

    async def _start_store(self) -> None:
        from .shard import agent_name
        from .store import ResultStore

        s, sc = self.settings, self.cfg.store
        self.agent_name = s.agent or agent_name(s.shard)
        store_options: dict[str, Any] = {
            "retention_s": sc.retention_s,
            "flush_interval_s": sc.flush_interval_s,
            "max_queue": sc.max_queue,
            "chunk_window_s": sc.chunk_s,
        }
        if not s.shared or "batch_size" in sc.model_fields_set:
            store_options["batch_size"] = sc.batch_size  # else PostgreSQL's own default
        store: ResultStore
        if s.shared:
            from .store_pg import PgResultStore

            pg = PgResultStore(s.db, agent=self.agent_name, partition_s=sc.partition_s,
                               **store_options)  # fmt: skip
            # the configured labels, for `fastping report --label` on the shared database
            pg.set_labels({t.host: t.labels for t in self.initial_targets if t.labels})
            store = pg
        else:
            store = ResultStore(s.db, **store_options)
        # first: a file that is not a fastping database is refused here (a PostgreSQL
        # server that is down is not: the writer retries it while results queue)
        await store.start()
        self._store = store

    async def _start_network(self) -> None:
        if self.settings.network is None:
            return
        from .netstate import NetworkMonitor

        # while our own network is down, probes are recorded as local_down, not loss
        self.network = network = NetworkMonitor(self.settings.network)
        await network.start()
        self.log.info("watching this host's network", state=network.state.value,
                      reason=network.reason)  # fmt: skip

    def _build_engine(self) -> None:
        from .engine import MonitoringEngine
        from .guard import ResourceGuard
        from .loss import OutageRule

        s, opts, rc = self.settings, self.options, self.cfg.resources
        guard = ResourceGuard(
            opts.max_cpu_percent if opts.max_cpu_percent is not None else rc.max_cpu_percent,
            opts.max_memory_mb if opts.max_memory_mb is not None else rc.max_memory_mb,
            check_interval_s=rc.check_interval_s,
            logger=get_engine_logger(),
        )
        resolver_text = opts.resolver or self.cfg.resolver
        if resolver_text:
            from .dnsresolve import DnsResolver, parse_server

            # host names through a DnsSocket to this server, re-resolved on their TTL
            self.resolver = DnsResolver(*parse_server(resolver_text))
        ts = self.initial_targets
        self._engine = engine = MonitoringEngine(
            store=self.store,
            interval_s=s.interval_s,
            timeout_s=s.timeout_s,
            min_interval_s=min([s.interval_s] + [t.interval_s for t in ts]),
            max_timeout_s=max([s.timeout_s] + [t.timeout_s for t in ts]),
            store_flush_s=self.cfg.store.chunk_s,
            mode=s.mode,
            socket_options={"payload_size": self.cfg.defaults.payload_size},
            guard=guard,
            network=self.network,
            stop_flush_s=opts.stop_timeout_s,
            outage_rule=OutageRule(min_lost=opts.outage_after),
            resolver=self.resolver,
            **s.trace,
        )
        for t in ts:
            engine.add_target(t.host, interval_s=t.interval_s, timeout_s=t.timeout_s,
                              labels=t.labels)  # fmt: skip

    def _start_outage_hook(self) -> None:
        url = self.options.outage_webhook
        if not url:
            return
        from .netstate import _Webhook

        self._hook = hook = _Webhook(url, 5.0, 3)

        def post_outages(evs: Any) -> None:
            for ev in evs:
                doc = {"event": f"outage_{ev.what}", "state": f"outage {ev.what}"}
                doc.update(ev.outage.to_dict())
                hook.post(doc)

        self.engine.add_outage_listener(post_outages)

    def _start_metrics(self) -> None:
        listen = self.settings.metrics_listen
        if not listen:
            return
        from .metrics import serve_metrics

        # label names: every configured label (a target added later cannot add one)
        self.metrics = serve_metrics(
            self.engine, listen, label_names=self.label_names, shard=self.settings.shard
        )
        self.log.info("serving Prometheus metrics", url=self.metrics.url)

    def _start_remote_write(self) -> None:
        url = self.settings.remote_write_url
        if not url:
            return
        from .remote_write import RemoteWriter

        rw = self.cfg.remote_write
        if self.metrics is not None:
            collector = self.metrics.collector
        else:
            from .metrics import MetricsCollector

            collector = MetricsCollector(
                self.engine, label_names=self.label_names, shard=self.settings.shard
            )
        self.remote = remote = RemoteWriter(
            collector,
            url,
            interval_s=self.options.remote_write_interval_s or rw.interval_s,
            timeout_s=rw.timeout_s,
            # what a Prometheus scrape would have added
            labels={"job": "fastping", "instance": self.agent_name or "", **rw.labels},
            headers=rw.headers,
        )
        remote.start()
        self.log.info("remote write on", url=url, interval_s=remote.interval_s)

    def _start_timing(self) -> None:
        # the prober's own timing windows live beside the results (SQLite: in the
        # file; PostgreSQL: with this agent's name)
        store = self.store
        write = getattr(store, "write_timing", None) if self.settings.shared else None
        self._timing = timing = TimingRecorder(self.engine, store.db, self.log, write=write)
        self._timing_task = asyncio.create_task(timing.every(float(self.cfg.store.chunk_s)))

    def request_stop(self) -> None:
        """Ask ``run()`` / ``run_until()`` to stop (what SIGINT / SIGTERM do)."""
        if self._engine is not None:
            self._engine.request_stop()

    async def run(self, duration_s: float | None = None, *, handle_signals: bool = True) -> None:
        """Start (unless started), run until ``duration_s`` passes, ``request_stop()``
        is called or (``handle_signals``) SIGINT / SIGTERM arrives, then stop."""
        if self._state == "new":
            await self.start()
        elif self._state != "started":
            raise RuntimeError(f"an agent runs once (this one is {self._state})")
        try:
            await self.engine.run(duration_s, handle_signals=handle_signals)
        finally:
            await self.stop()

    async def run_until(self, stop: asyncio.Event, duration_s: float | None = None) -> None:
        """``run()`` until ``stop`` is set (or ``duration_s`` passes); no signal handlers."""
        if self._state == "new":
            await self.start()
        waiter = asyncio.create_task(stop.wait(), name="fastping-agent-stop")
        waiter.add_done_callback(lambda _t: self.request_stop())
        try:
            await self.run(duration_s, handle_signals=False)
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

    async def stop(self) -> None:
        """Stop the engine (probes in flight get their timeout, every result goes to
        the store), then everything beside it; the store last gets ``STORE_CLOSE_S``
        (at most ``stop_timeout_s``) to write what it holds. Safe to call twice."""
        if self._state in ("stopping", "stopped", "new"):
            return
        self._state = "stopping"
        try:
            if self._engine is not None:
                await self._engine.stop()
            await self._stop_sides()
            if self._store is not None:
                await self._store.close(timeout_s=min(STORE_CLOSE_S, self.options.stop_timeout_s))
            await self._stop_outputs()
        finally:
            self._state = "stopped"

    async def _stop_sides(self) -> None:
        if self.resolver is not None:
            self.log.info("resolver", server=repr(self.resolver), **self.resolver.stats())
            self.resolver.close()
        if self.http is not None:
            await self.http.stop()
        if self._timing_task is not None:
            self._timing_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timing_task
        if self._timing is not None:
            await self._timing.record()  # the last window (bounded: a 2 s timeout)

    async def _stop_outputs(self) -> None:
        if self.remote is not None:
            # one last push: the receiver's counters end where the run's did
            await asyncio.to_thread(self.remote.close)
            if self.metrics is None:
                self.remote.collector.detach()
        if self.metrics is not None:
            self.metrics.close()
        if self.network is not None:
            await self.network.stop()
        if self._hook is not None:
            # deliver what is queued (retries included), bounded like the store
            await asyncio.to_thread(self._hook.close, min(10.0, self.options.stop_timeout_s))

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- while running -----------------------------------------------------------

    def reload(self, cfg: FastpingConfig) -> None:
        """Watch ``cfg``'s targets and HTTP checks from now on (the options stay over
        it): ``apply()`` of what the configuration lists now."""
        opts, shard = self.options, self.settings.shard
        checks = shard_checks(cfg.http_checks(), shard)
        new = select_targets(config_targets(cfg, opts.interval_s, opts.timeout_s), shard)[0]
        self.apply(new, checks)

    def apply(self, targets: Sequence[AgentTarget], http_checks: Sequence[Any] = ()) -> None:
        """Add and remove the targets (and HTTP checks) that differ from the running
        ones; the store, the metrics endpoint and every other target go on untouched
        (a removed target's probes in flight still get their result). A target the
        engine refuses is logged and left out."""
        if self._state != "started":
            self.log.warning("targets not changed: the agent is not running", state=self._state)
            return
        checks = list(http_checks)
        if self.http is not None:
            h_added, h_removed = self.http.sched.replace(checks)
            if self.http.metrics is not None:
                self.http.metrics.keep_only(c.url for c in checks)
            self.log.info("reloaded HTTP checks", added=h_added, removed=h_removed,
                          checks=len(self.http.sched.checks))  # fmt: skip
        elif checks:
            self.log.warning("reload: HTTP checks appear only at start; restart the monitor "
                             "for them", checks=len(checks))  # fmt: skip
        self._apply_targets([AgentTarget(*t) for t in targets])

    def _apply_targets(self, targets: list[AgentTarget]) -> None:
        engine, current = self.engine, self.current
        wanted = {t.host: t for t in targets}
        removed = [h for h, t in current.items() if wanted.get(h) != t]
        added = [t for h, t in wanted.items() if current.get(h) != t]
        for h in removed:
            engine.remove_target(h)
            del current[h]
        refused = 0
        for t in added:
            try:
                engine.add_target(t.host, interval_s=t.interval_s, timeout_s=t.timeout_s,
                                  labels=t.labels)  # fmt: skip
            except FastpingError as e:
                refused += 1
                self.log.error("reload: target refused", target=t.host, error=str(e))
                continue
            current[t.host] = t
        set_labels = getattr(engine.store, "set_labels", None)  # a shared store keeps them
        if set_labels is not None:
            set_labels({t.host: t.labels for t in added if t.host in current})
        self.log.info("reloaded targets", added=len(added) - refused, removed=len(removed),
                      refused=refused, targets=len(current))  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """The run's numbers (what ``fastping monitor`` prints as JSON at the end)."""
        st = self.engine.stats()
        ss = self.store.stats()
        summary = {
            "targets": st["targets"],
            "sent": st["sent"],
            "received": st["received"],
            "results": st["results"],
            "stored": ss.get("written"),
            "store_dropped": ss.get("dropped"),
            "store_last_error": ss.get("last_error"),
            "outcomes": st["outcomes"],
            "subscriber_dropped": st["subscriber_dropped"],
            "interval_factor": st["interval_factor"],
            "send_lateness": st["send_lateness"],
            "db": self.store.db,
        }
        if st["tcp_timing"] is not None:  # "raw" SYNs, or "connect" (no CAP_NET_RAW / mode)
            summary["timing"] = st["tcp_timing"]
        if self.settings.shared:
            summary["agent"] = self.agent_name
        if st.get("paths") is not None:
            summary["paths"] = st["paths"]
        if self.remote is not None:
            summary["remote_write"] = self.remote.stats()
        if self.http is not None:
            summary["http"] = self.http.summary()
        if self.metrics is not None:
            summary["metrics"] = self.metrics.url
            summary["metrics_scrapes"] = self.metrics.scrapes
        return summary


class TimingRecorder:
    """Hands the engine's send lateness to the database window by window (beside the
    results, in its own table), so `fastping report` shows the prober's own timing.
    A failed write is logged and counted, never fatal: the results matter more."""

    def __init__(self, engine: MonitoringEngine, db: str, log: Any, write: Any = None) -> None:
        from .timing import SendLateness

        self.engine, self.db, self.log = engine, db, log
        # write(t0, t1, window, factor): a shared store's; else timing.write_window(db, ...)
        self.write = write
        self.last = SendLateness()
        self.t_last = time.time()
        self.failures = 0
        self.factor_max = 1.0  # the guard's largest interval factor in this window

    async def every(self, period_s: float) -> None:
        n = max(1, round(period_s))
        while True:
            for _ in range(n):  # the guard's factor, looked at every second
                await asyncio.sleep(max(period_s, 1.0) / n)
                self.factor_max = max(self.factor_max, self.engine.interval_factor)
            await self.record()

    async def record(self) -> None:
        from .timing import delta, write_window

        now, t = self.engine.send_lateness(), time.time()
        win = delta(now, self.last)
        if win.probes == 0:
            return
        factor = max(self.factor_max, self.engine.interval_factor)
        self.check_schedule(win, t - self.t_last)
        try:
            if self.write is not None:
                await asyncio.to_thread(self.write, self.t_last, t, win, factor)
            else:
                await asyncio.to_thread(write_window, self.db, self.t_last, t, win, factor)
        except Exception as e:  # noqa: BLE001 - sqlite3, psycopg, OSError: never fatal
            self.failures += 1
            if self.failures == 1:
                self.log.warning("send timing not stored", db=self.db, error=str(e))
            return
        self.last, self.t_last, self.factor_max = now, t, self.engine.interval_factor

    def check_schedule(self, win: Any, window_s: float) -> None:
        """Say so when probes missed their schedule in this window (the event loop was
        held up: a scrape storm, a slow disk, an overloaded machine): a probe sent late
        is not the network's delay, and the operator must know the rounds slipped."""
        from .timing import behind_schedule_us

        limit_us = behind_schedule_us(self.engine.interval_s)
        behind = win.at_least_us(limit_us)
        if behind:
            self.log.warning(
                "probing behind schedule",
                behind_schedule=behind,
                probes=win.probes,
                late_by_at_least_ms=round(limit_us / 1e3, 1),
                window_s=round(window_s, 1),
                send_late_p99_ms=round((win.quantile_us(0.99) or 0.0) / 1e3, 1),
                send_late_max_ms=round(win.max_ns / 1e6, 1),
            )


class HttpSide:
    """The HTTP checks beside the engine: scheduler task, store table, metrics."""

    def __init__(self, sched: Any, task: Any, hstore: Any, rtts: Any, metrics: Any) -> None:
        self.sched, self.task, self.hstore, self.rtts = sched, task, hstore, rtts
        self.metrics = metrics  # HttpMetricsCollector or None
        self.results = 0

    async def stop(self) -> None:
        self.sched.request_stop()
        await self.task
        await self.hstore.close()

    def summary(self) -> dict[str, Any]:
        st = self.hstore.stats()
        return {"checks": len(self.sched.checks), "runs": self.sched.runs,
                "skipped": self.sched.skipped, "errors": self.sched.errors,
                "results": self.results, "stored": st["written"],
                "store_dropped": st["dropped"],
                "icmp_addresses": len(self.rtts.added)}  # fmt: skip

    def count(self, rs: list[Any]) -> None:
        self.results += len(rs)


class EngineRtts:
    """The ICMP RTT of an HTTP check's address, from the engine: the first time an
    address is asked for it becomes an engine target (unless it is one already), and
    from then on its last reply's RTT is the answer (None before the first reply or
    after a timeout: the split then falls back to the TCP connect time)."""

    def __init__(self, engine: Any, interval_s: float, timeout_s: float, log: Any) -> None:
        self.engine, self.interval_s, self.timeout_s, self.log = engine, interval_s, timeout_s, log
        self.added: set[str] = set()

    def __call__(self, address: str) -> float | None:
        from .errors import TargetError

        if address not in self.engine:
            try:
                self.engine.add_target(
                    address, interval_s=self.interval_s, timeout_s=self.timeout_s
                )
            except TargetError as e:
                self.log.warning("no ICMP RTT for an HTTP check's address", address=address,
                                 error=str(e))  # fmt: skip
                return None
            self.added.add(address)
            return None
        info = self.engine.target(address)
        return None if info.last_outcome != "reply" else info.last_rtt_ms


async def start_http(
    cfg: FastpingConfig,
    checks: list[Any],
    engine: Any,
    store: Any,
    metrics: Any,
    log: Any,
    interval_s: float,
    timeout_s: float,
) -> HttpSide:
    """Start the HTTP checks: results to their table beside the store's, metrics on
    the endpoint, the ICMP RTT of their addresses from the engine (``http.icmp``)."""
    from .http import HttpRunner, HttpScheduler
    from .httpstore import HttpStore

    hc = cfg.http
    rtts = EngineRtts(engine, interval_s, timeout_s, log)
    runner = HttpRunner(max_concurrency=hc.max_concurrency, rtt_of=rtts if hc.icmp else None,
                        resolve_cache_s=hc.resolve_cache_s)  # fmt: skip
    hstore = HttpStore(store.path, retention_s=cfg.store.retention_s,
                       flush_interval_s=max(0.5, cfg.store.flush_interval_s))  # fmt: skip
    await hstore.start()
    sinks: list[Any] = [hstore.submit]
    hm = None
    if metrics is not None:
        from .metrics import HttpMetricsCollector

        hm = HttpMetricsCollector()
        metrics.collector.add_collector(hm)
        sinks.append(hm.observe)
    sched: Any
    if hc.workers > 1:
        from .httpworkers import HttpWorkerPool

        sched = HttpWorkerPool(checks, hc.workers, max_concurrency=hc.max_concurrency,
                               resolve_cache_s=hc.resolve_cache_s, sinks=sinks,
                               rtt_of=rtts if hc.icmp else None)  # fmt: skip
    else:
        sched = HttpScheduler(checks, runner, sinks=sinks)
    log.info("HTTP checks", checks=len(checks), max_concurrency=hc.max_concurrency,
             workers=hc.workers, icmp_split=hc.icmp)  # fmt: skip
    task = asyncio.create_task(sched.run(), name="fastping-http")
    side = HttpSide(sched, task, hstore, rtts, hm)
    sched.sinks.append(side.count)
    return side
