"""``fastping monitor``: watch targets continuously, record every probe in SQLite.

    fastping monitor                       # 127.0.0.1 and ::1 (loopback only)
    fastping monitor 10.0.0.1 gw.example --interval 0.5 --duration 60
    fastping monitor --config fastping.yaml --db /var/lib/fastping/fastping.db

On a terminal a live table (per target: status, last RTT, loss) is redrawn about
once a second; otherwise structured logs, with a summary line every 10 s. SIGINT /
SIGTERM stop cleanly: probes in flight get their timeout, every result is written,
and a final JSON summary goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside run()
    from ..engine import MonitoringEngine

DEFAULT_TARGETS = ("127.0.0.1", "::1")  # loopback only: a bare `fastping monitor` is safe
DEFAULT_DB = "fastping.db"
MAX_EXPANDED = 1 << 20  # addresses a CIDR block / range on the command line may expand to
SUMMARY_EVERY_S = 10.0
# at stop the engine gives the store --stop-timeout to write; close() then waits at most
# this much more before counting what is left as dropped (exit 4)
STORE_CLOSE_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import argtypes

    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="addresses, host names, CIDR blocks or ranges (default: 127.0.0.1 and ::1 "
        "when no config names targets); tcp://HOST:PORT for a TCP SYN probe of PORT",
    )
    parser.add_argument(
        "--tcp",
        action="store_true",
        help="probe the plain targets (command line, --file, file_sd) with TCP SYNs instead "
        "of ICMP echo, a HOST:PORT target on its port, the others on each --port (raw SYNs "
        "with CAP_NET_RAW, else connect()); open = reply, closed, filtered = timeout",
    )
    parser.add_argument(
        "--udp",
        action="store_true",
        help="the same with UDP probes (no privilege): open = reply, closed (ICMP port "
        "unreachable), open|filtered = timeout",
    )
    parser.add_argument(
        "--port",
        "-p",
        dest="ports",
        metavar="PORTS",
        help="ports for --tcp / --udp: 22,80,443 or 8000-8010 (each target on each port is a "
        "target of its own; HOST:PORT targets keep their own port)",
    )
    parser.add_argument("--config", "-C", metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--file", "-f", metavar="FILE", help="read more targets from FILE ('-' = stdin)"
    )
    parser.add_argument(
        "--interval",
        "-i",
        type=argtypes.seconds(argtypes.INTERVAL_MIN_S, 86400.0),
        metavar="S",
        help="seconds between probes per target (at least 0.001)",
    )
    parser.add_argument(
        "--timeout", "-t", type=argtypes.timeout, metavar="S", help="probe timeout (at most 3600)"
    )
    parser.add_argument(
        "--db",
        metavar="PATH|URL",
        help=f"SQLite file for results (default: ./{DEFAULT_DB}), or a shared PostgreSQL "
        "database: postgresql://user@host/dbname (store.url in the config)",
    )
    parser.add_argument(
        "--agent",
        metavar="NAME",
        help="this agent's name on its rows in a shared PostgreSQL store and as the "
        "remote-write instance (default: the host name, with #I/N when sharded)",
    )
    parser.add_argument(
        "--remote-write",
        metavar="URL",
        help="push the /metrics series to a Prometheus remote-write receiver (e.g. "
        "http://127.0.0.1:8428/api/v1/write) every --remote-write-interval seconds",
    )
    parser.add_argument(
        "--remote-write-interval",
        type=argtypes.seconds(0.1, 86400.0),
        metavar="S",
        help="seconds between remote-write pushes (default 15; remote_write.interval_s)",
    )
    parser.add_argument(
        "--duration",
        "-d",
        type=argtypes.seconds(0.0, 10.0 * 365 * 86400, lo_open=True),
        metavar="S",
        help="stop after S seconds (default: never)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=argtypes.seconds(0.0, 3600.0, lo_open=True),
        default=10.0,
        metavar="S",
        help="at stop, wait at most S seconds for the database to take the last results; "
        "what it has not taken then is counted as dropped and said (exit 4) (default 10)",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "raw", "dgram", "connect"),
        help="socket mode (default: auto; connect: TCP targets by connect(), no privilege)",
    )
    parser.add_argument(
        "--max-cpu-percent",
        type=float,
        metavar="P",
        help="resource guard: slow probing above P %% of one core (default 50; 0 = off)",
    )
    parser.add_argument(
        "--max-memory-mb",
        type=float,
        metavar="MB",
        help="resource guard: slow probing above MB of RSS (default 100; 0 = off)",
    )
    parser.add_argument(
        "--netstate",
        action="store_true",
        help="watch this host's own network (netlink; the config's network: section turns "
        "this on too) and record probes sent while it is down as local_down, not as loss",
    )
    parser.add_argument(
        "--outage-after",
        type=int,
        default=3,
        metavar="N",
        help="N consecutive lost probes make an outage: logged, stored (fastping report "
        "lists them) and counted in the metrics (default 3)",
    )
    parser.add_argument(
        "--outage-webhook",
        metavar="URL",
        help="POST each outage start and end (a target's, or our own network's) to URL as "
        "JSON (http:// or https://; retried, never blocking probing)",
    )
    parser.add_argument(
        "--trace-every",
        type=argtypes.seconds(1.0, 7 * 86400.0),
        metavar="S",
        help="trace every ICMP target every S seconds (at least 1; trace.every_s): path "
        "changes are logged, stored (fastping report --paths) and counted in the metrics",
    )
    parser.add_argument(
        "--mtu-on-change",
        action="store_true",
        help="with --trace-every: measure each target's path MTU (and find PMTUD black "
        "holes) at its first trace and again after each path change (trace.mtu_on_change)",
    )
    parser.add_argument(
        "--trace-on-outage",
        action="store_true",
        help="with --trace-every: also trace a target at once when its outage starts "
        "(--outage-after lost probes; trace.on_outage): where does its path end now?",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="watch only share I of N (counted from 0) of the targets: N agents given the "
        "same list split it with no overlap and no gap",
    )
    parser.add_argument(
        "--metrics",
        nargs="?",
        const="127.0.0.1:9374",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (default off; "
        "127.0.0.1:9374 when given without an address; 0.0.0.0:PORT for every interface)",
    )
    parser.add_argument(
        "--resolver",
        metavar="ADDR[:PORT]",
        help="resolve host-name targets by asking this DNS server (A, then AAAA) on the "
        "batched DNS socket, again when each record's TTL runs out (default: the system's "
        "resolver every 300 s); also `resolver:` in the config",
    )
    parser.add_argument(
        "--table",
        choices=("auto", "always", "never"),
        default="auto",
        help="live table (auto: when stdout is a terminal)",
    )
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ...")
    parser.add_argument("--log-file", metavar="FILE", help="JSON log lines to FILE (rotated)")


def _die(msg: str) -> Any:
    from ..errors import ConfigError

    raise ConfigError(msg)


def _expand(host: str) -> list[str]:
    """One user target -> targets for the engine (blocks and ranges expanded, bounded;
    ``tcp://10.0.0.0/30:22`` is each address on port 22)."""
    from ..targets import expand_kind_target

    return expand_kind_target(host, MAX_EXPANDED)


def _port_kind(args: argparse.Namespace) -> str | None:
    """ "tcp" / "udp" for --tcp / --udp, None for neither (ICMP)."""
    from ..errors import TargetError

    tcp, udp = getattr(args, "tcp", False), getattr(args, "udp", False)
    if tcp and udp:
        raise TargetError("--tcp and --udp: give one (tcp:// and udp:// targets may be mixed)")
    return "tcp" if tcp else "udp" if udp else None


def _with_ports(args: argparse.Namespace, texts: list[str]) -> list[str]:
    """The plain targets of the command line, --file and file_sd with --tcp / --udp:
    a HOST:PORT target ([v6]:PORT) on its own port, the others on every --port
    (tcp:// and udp:// targets keep theirs); as given without --tcp / --udp."""
    from ..errors import TargetError
    from ..targets import ICMP, kind_label, split_host_port, split_kind
    from .sweep import parse_ports

    ports = getattr(args, "ports", None)
    kind = _port_kind(args)
    if kind is None:
        if ports is not None:
            raise TargetError(
                "--port is for TCP or UDP probes: add --tcp or --udp (ICMP has no ports)"
            )
        return texts
    port_list = parse_ports(ports) if ports is not None else []
    out = []
    for t in texts:
        hp = split_host_port(t)
        if split_kind(t).kind != ICMP:
            out.append(t)
        elif hp is not None:
            out.append(kind_label(kind, *hp))
        elif not port_list:
            raise TargetError(
                f"--{kind} needs the ports to probe {t!r}: --port 22,80,443 (or write "
                f"{t}:PORT, {kind}://{t}:PORT)"
            )
        else:
            out.extend(kind_label(kind, t, p) for p in port_list)
    return out


Wanted = tuple[str, float, float, dict[str, str]]  # (host, interval_s, timeout_s, labels)


def read_file_sd(path: str, keep_ports: bool = False) -> list[tuple[str, dict[str, str]]]:
    """Targets of a Prometheus file_sd JSON file: a list of ``{"targets": [...],
    "labels": {...}}`` groups (the format Prometheus' ``file_sd_configs`` reads, so
    one inventory feeds both). A ``host:port`` target is watched as ``host`` (ICMP),
    or kept whole with ``keep_ports`` (--tcp / --udp probe it on its port)."""
    import json

    from ..errors import TargetError

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise TargetError(f"cannot read targets file {path!r}: {e.strerror or e}") from None
    except ValueError as e:
        raise TargetError(f"{path}: not JSON ({e}); file_sd is a list of target groups") from None
    if not isinstance(data, list):
        raise TargetError(f'{path}: file_sd JSON must be a list of {{"targets": [...]}} groups')
    out: list[tuple[str, dict[str, str]]] = []
    for i, g in enumerate(data):
        hosts = g.get("targets") if isinstance(g, dict) else None
        labels = g.get("labels", {}) if isinstance(g, dict) else None
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise TargetError(f'{path}: group {i}: "targets" must be a list of strings')
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise TargetError(f'{path}: group {i}: "labels" must map strings to strings')
        labels = {k: v for k, v in labels.items() if not k.startswith("__")}  # Prometheus-internal
        out.extend((h.strip() if keep_ports else _strip_port(h), dict(labels)) for h in hosts)
    return out


def _strip_port(target: str) -> str:
    """``host:port`` / ``[v6]:port`` -> host; a bare address or name is kept."""
    if target.startswith("["):
        return target[1:].partition("]")[0]
    host, sep, port = target.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return target


def _targets(
    args: argparse.Namespace,
    cfg: Any,
    shard: tuple[int, int] | None,
    interval_s: float,
    timeout_s: float,
    http_only: bool = False,
) -> tuple[list[Wanted], int]:
    """The targets to watch (deduplicated, this shard's share) and how many were listed."""
    from ..config import is_url
    from ..errors import ConfigError
    from ..shard import shard_of

    wanted: list[Wanted] = []
    texts = [t for t in args.targets if not is_url(t)]  # URLs are HTTP checks
    if args.file and args.file.endswith(".json"):
        ported = _port_kind(args) is not None
        for host, labels in read_file_sd(args.file, keep_ports=ported):
            for text in _with_ports(args, [host]) if ported else [host]:
                wanted.extend((h, interval_s, timeout_s, labels) for h in _expand(text))
    elif args.file:
        from ..targets import read_targets_file

        texts.extend(read_targets_file(args.file))
    for text in _with_ports(args, texts):
        wanted.extend((h, interval_s, timeout_s, {}) for h in _expand(text))
    for tc in cfg.targets:
        if is_url(tc.host):
            continue
        iv, to, _payload = cfg.target_settings(tc)
        if args.interval is not None and tc.interval_s is None:
            iv = args.interval
        if args.timeout is not None and tc.timeout_s is None:
            to = args.timeout
        wanted.extend((h, iv, to, dict(tc.labels)) for h in _expand(tc.label))
    if not wanted and http_only:
        return [], 0
    if not wanted:
        if args.config:
            raise ConfigError(
                f"{args.config}: no targets: list some under 'targets:' or on the command line"
            )
        wanted = [(h, interval_s, timeout_s, {}) for h in DEFAULT_TARGETS]
    seen: set[str] = set()
    targets = []
    for w in wanted:
        if w[0] not in seen and (shard is None or shard_of(w[0], shard[1]) == shard[0]):
            seen.add(w[0])
            targets.append(w)
    return targets, len({w[0] for w in wanted})


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..config import FastpingConfig, load_config
    from ..errors import ConfigError
    from ..logs import configure_logging, get_logger

    cfg = load_config(args.config) if args.config else FastpingConfig()

    from ..shard import parse_shard

    shard_text = args.shard or cfg.shard
    shard: tuple[int, int] | None = None
    if shard_text:
        shard = parse_shard(shard_text, "--shard" if args.shard else f"{args.config}: shard")
    metrics_listen = args.metrics or cfg.metrics.listen
    if metrics_listen:
        from ..metrics import parse_listen

        parse_listen(
            metrics_listen, "--metrics" if args.metrics else f"{args.config}: metrics.listen"
        )

    rw_url = args.remote_write or cfg.remote_write.url
    if rw_url and not rw_url.startswith(("http://", "https://")):
        raise ConfigError(f"--remote-write {rw_url!r}: give an http:// or https:// URL")
    if rw_url:
        try:
            import cramjam  # noqa: F401
        except ImportError:
            raise ConfigError(
                "remote write needs snappy (cramjam): pip install 'fastping[remote-write]'"
            ) from None
    db = args.db or cfg.store.url or (cfg.store.path if args.config else DEFAULT_DB)
    from ..store import is_postgres_url

    if is_postgres_url(db):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"--db {db.split('://')[0]}://...: the PostgreSQL store needs psycopg 3: "
                "pip install 'fastping[postgresql]' (or 'psycopg[binary]')"
            ) from None

    interval_s = args.interval if args.interval is not None else cfg.defaults.interval_s
    timeout_s = args.timeout if args.timeout is not None else cfg.defaults.timeout_s
    for name, v in (("--interval", interval_s), ("--timeout", timeout_s)):
        if not v > 0:
            raise ConfigError(f"{name} {v!r}: give a positive number of seconds")
    if args.outage_webhook:
        from ..netstate import _webhook_url_problem

        why = _webhook_url_problem(args.outage_webhook)
        if why:
            raise ConfigError(f"--outage-webhook {args.outage_webhook!r}: {why}")
    if args.outage_after < 1:
        raise ConfigError(
            f"--outage-after {args.outage_after}: give how many consecutive lost probes make "
            "an outage, 1 or more (3 is usual)"
        )
    mode = args.mode or cfg.mode
    if mode == "subprocess":
        raise ConfigError(
            "mode 'subprocess' cannot run the monitor (it multiplexes every target through "
            "one socket): use auto, raw, dgram or connect, or grant CAP_NET_RAW"
        )

    _trace_options(args, cfg)  # a bad combination refused before anything starts
    from ..config import is_url

    http_checks = cfg.http_checks([t for t in args.targets if is_url(t)])
    if shard is not None:
        from ..shard import shard_of

        http_checks = [c for c in http_checks if shard_of(c.url, shard[1]) == shard[0]]
    targets, listed = _targets(args, cfg, shard, interval_s, timeout_s, bool(http_checks))
    _check_sockets(targets, mode)

    table = args.table == "always" or (args.table == "auto" and sys.stdout.isatty())
    lc = cfg.logging
    level = args.log_level or lc.level
    configure_logging(
        level=level if not table or level in ("ERROR", "CRITICAL") else "WARNING",
        file=args.log_file or lc.file,
        max_bytes=lc.max_bytes,
        backup_count=lc.backup_count,
        console=lc.console,
        fmt=lc.format,
    )
    if table and (args.log_file or lc.file):
        # the table owns the terminal; the file still gets the full level
        import logging

        logging.getLogger("fastping").setLevel(str(level).upper())
    log = get_logger("fastping.monitor")
    payloads = {cfg.target_settings(tc)[2] for tc in cfg.targets} | {cfg.defaults.payload_size}
    if len(payloads) > 1:
        log.warning(
            "per-target payload_size is not supported by the monitor (one socket per family); "
            f"every target uses defaults.payload_size={cfg.defaults.payload_size}"
        )
    network_cfg = None
    if cfg.network.model_fields_set or args.netstate:
        # validated with the file: a bad key was a ConfigError naming it and its line
        network_cfg = cfg.network
    if shard is not None:
        shard_txt = f"{shard[0]}/{shard[1]}"
        log.info("sharding: this agent watches its share", shard=shard_txt, targets=len(targets),
                 listed=listed)  # fmt: skip
        if not targets:
            log.warning("this shard holds none of the listed targets", shard=shard_txt,
                        listed=listed)  # fmt: skip

    return asyncio.run(
        _main(args, cfg, targets, mode, table, log, metrics_listen, shard, network_cfg, http_checks)
    )


async def _main(
    args: argparse.Namespace,
    cfg: Any,
    targets: list[tuple[str, float, float, dict[str, str]]],
    mode: str,
    table: bool,
    log: Any,
    metrics_listen: str | None = None,
    shard: tuple[int, int] | None = None,
    network_cfg: Any = None,
    http_checks: list[Any] | None = None,
) -> int:
    import asyncio
    import contextlib
    import json
    import signal

    from ..engine import MonitoringEngine
    from ..guard import ResourceGuard
    from ..loss import OutageRule
    from ..store import ResultStore

    rc = cfg.resources
    guard = ResourceGuard(
        args.max_cpu_percent if args.max_cpu_percent is not None else rc.max_cpu_percent,
        args.max_memory_mb if args.max_memory_mb is not None else rc.max_memory_mb,
        check_interval_s=rc.check_interval_s,
        logger=get_engine_logger(),
    )
    from ..shard import agent_name
    from ..store import is_postgres_url

    sc = cfg.store
    db = args.db or sc.url or (sc.path if args.config else DEFAULT_DB)
    agent = args.agent or sc.agent or agent_name(shard)
    shared = is_postgres_url(db)
    store_options: dict[str, Any] = {
        "retention_s": sc.retention_s,
        "flush_interval_s": sc.flush_interval_s,
        "max_queue": sc.max_queue,
        "chunk_window_s": sc.chunk_s,
    }
    if not shared or "batch_size" in sc.model_fields_set:
        store_options["batch_size"] = sc.batch_size  # else PostgreSQL's own default
    store: ResultStore
    if shared:
        from ..store_pg import PgResultStore

        pg = PgResultStore(db, agent=agent, partition_s=sc.partition_s, **store_options)
        # the configured labels, for `fastping report --label` on the shared database
        pg.set_labels({host: labels for host, _, _, labels in targets if labels})
        store = pg
    else:
        store = ResultStore(db, **store_options)
    # first: a file that is not a fastping database is refused here (a PostgreSQL
    # server that is down is not: the writer retries it while results queue)
    await store.start()
    network = None
    if network_cfg is not None:
        from ..netstate import NetworkMonitor

        # while our own network is down, probes are recorded as local_down, not loss
        network = NetworkMonitor(network_cfg)
        await network.start()
        log.info("watching this host's network", state=network.state.value,
                 reason=network.reason)  # fmt: skip
    default_interval = args.interval if args.interval is not None else cfg.defaults.interval_s
    default_timeout = args.timeout if args.timeout is not None else cfg.defaults.timeout_s
    resolver = None
    if getattr(args, "resolver", None) or cfg.resolver:
        from ..dnsresolve import DnsResolver, parse_server

        # host names through a DnsSocket to this server, re-resolved on their TTL
        resolver = DnsResolver(*parse_server(args.resolver or cfg.resolver or ""))
    engine = MonitoringEngine(
        store=store,
        interval_s=default_interval,
        timeout_s=default_timeout,
        min_interval_s=min([default_interval] + [t[1] for t in targets]),
        max_timeout_s=max([default_timeout] + [t[2] for t in targets]),
        store_flush_s=sc.chunk_s,
        mode=mode,
        socket_options={"payload_size": cfg.defaults.payload_size},
        guard=guard,
        network=network,
        stop_flush_s=args.stop_timeout,
        outage_rule=OutageRule(min_lost=args.outage_after),
        resolver=resolver,
        **_trace_options(args, cfg),
    )
    for host, iv, to, labels in targets:
        engine.add_target(host, interval_s=iv, timeout_s=to, labels=labels)
    outage_hook = None
    if args.outage_webhook:
        from ..netstate import _Webhook

        outage_hook = _Webhook(args.outage_webhook, 5.0, 3)
        hook = outage_hook

        def post_outages(evs: Any) -> None:
            for ev in evs:
                doc = {"event": f"outage_{ev.what}", "state": f"outage {ev.what}"}
                doc.update(ev.outage.to_dict())
                hook.post(doc)

        engine.add_outage_listener(post_outages)

    metrics = None
    if metrics_listen:
        from ..metrics import serve_metrics

        # label names: every configured label (a target added later cannot add one)
        metrics = serve_metrics(
            engine,
            metrics_listen,
            label_names={k for t in targets for k in t[3]},
            shard=shard,
        )
        log.info("serving Prometheus metrics", url=metrics.url)
    rw = cfg.remote_write
    rw_url = args.remote_write or rw.url
    remote = None
    if rw_url:
        from ..remote_write import RemoteWriter

        if metrics is not None:
            collector = metrics.collector
        else:
            from ..metrics import MetricsCollector

            collector = MetricsCollector(
                engine, label_names={k for t in targets for k in t[3]}, shard=shard
            )
        remote = RemoteWriter(
            collector,
            rw_url,
            interval_s=args.remote_write_interval or rw.interval_s,
            timeout_s=rw.timeout_s,
            # what a Prometheus scrape would have added
            labels={"job": "fastping", "instance": agent, **rw.labels},
            headers=rw.headers,
        )
        remote.start()
        log.info("remote write on", url=rw_url, interval_s=remote.interval_s)
    loop = asyncio.get_running_loop()
    current = {t[0]: t for t in targets}

    http_side: dict[str, _HttpSide] = {}

    def reload() -> None:
        _reload(args, engine, current, shard, log, http_side.get("http"))

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload)
    view = asyncio.create_task(_table(engine) if table else _summaries(engine, log))
    first_after = max([default_interval] + [t[1] for t in targets]) + max(
        [default_timeout] + [t[2] for t in targets]
    )
    first = asyncio.create_task(first_round(engine, log, first_after + 0.5))
    # the prober's own timing windows live beside the results in the SQLite file
    # (SQLite: in the file, beside the results; PostgreSQL: with this agent's name)
    timing = _TimingRecorder(
        engine, store.db, log, write=getattr(store, "write_timing", None) if shared else None
    )
    timing_task = asyncio.create_task(timing.every(float(cfg.store.chunk_s)))
    http = None
    if http_checks:
        http = await _start_http(cfg, http_checks, engine, store, metrics, log, default_interval,
                                 default_timeout)  # fmt: skip
        http_side["http"] = http
    try:
        await engine.run(args.duration)
    finally:
        if resolver is not None:
            log.info("resolver", server=repr(resolver), **resolver.stats())
            resolver.close()
        if http is not None:
            await http.stop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        for task in (view, first, timing_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await timing.record()  # the last window (bounded: a 2 s timeout)
        await store.close(timeout_s=min(STORE_CLOSE_S, args.stop_timeout))
        if remote is not None:
            # one last push: the receiver's counters end where the run's did
            await asyncio.to_thread(remote.close)
            if metrics is None:
                remote.collector.detach()
        if metrics is not None:
            metrics.close()
        if network is not None:
            await network.stop()
        if outage_hook is not None:
            # deliver what is queued (retries included), bounded like the store
            await asyncio.to_thread(outage_hook.close, min(10.0, args.stop_timeout))
    st = engine.stats()
    ss = store.stats()
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
        "db": store.db,
    }
    if st["tcp_timing"] is not None:  # "raw" SYNs, or "connect" (no CAP_NET_RAW / --mode)
        summary["timing"] = st["tcp_timing"]
    if shared:
        summary["agent"] = agent
    if st.get("paths") is not None:
        summary["paths"] = st["paths"]
    if remote is not None:
        summary["remote_write"] = remote.stats()
    if http is not None:
        summary["http"] = http.summary()
    if metrics is not None:
        summary["metrics"] = metrics.url
        summary["metrics_scrapes"] = metrics.scrapes
    if table:
        sys.stdout.write("\n")
    print(json.dumps(summary), flush=True)
    if ss.get("dropped"):
        print(
            f"fastping: {ss['dropped']} of {st['results']} results were not written to "
            f"{store.db} (last error: {ss.get('last_error') or 'queue full'}); "
            f"{ss.get('written')} were",
            file=sys.stderr,
        )
        return 4
    return 0


def _trace_options(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """The engine's trace settings: --trace-every, else the config's trace: section."""
    tc = cfg.trace
    from ..errors import ConfigError

    every = getattr(args, "trace_every", None)
    every = every if every is not None else tc.every_s
    on_outage = bool(getattr(args, "trace_on_outage", False) or tc.on_outage)
    mtu = bool(getattr(args, "mtu_on_change", False) or tc.mtu_on_change)
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


class _HttpSide:
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


class _EngineRtts:
    """The ICMP RTT of an HTTP check's address, from the engine: the first time an
    address is asked for it becomes an engine target (unless it is one already), and
    from then on its last reply's RTT is the answer (None before the first reply or
    after a timeout: the split then falls back to the TCP connect time)."""

    def __init__(self, engine: Any, interval_s: float, timeout_s: float, log: Any) -> None:
        self.engine, self.interval_s, self.timeout_s, self.log = engine, interval_s, timeout_s, log
        self.added: set[str] = set()

    def __call__(self, address: str) -> float | None:
        from ..errors import TargetError

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


async def _start_http(
    cfg: Any,
    checks: list[Any],
    engine: Any,
    store: Any,
    metrics: Any,
    log: Any,
    interval_s: float,
    timeout_s: float,
) -> _HttpSide:
    import asyncio

    from ..http import HttpRunner, HttpScheduler
    from ..httpstore import HttpStore

    hc = cfg.http
    rtts = _EngineRtts(engine, interval_s, timeout_s, log)
    runner = HttpRunner(max_concurrency=hc.max_concurrency, rtt_of=rtts if hc.icmp else None,
                        resolve_cache_s=hc.resolve_cache_s)  # fmt: skip
    hstore = HttpStore(store.path, retention_s=cfg.store.retention_s,
                       flush_interval_s=max(0.5, cfg.store.flush_interval_s))  # fmt: skip
    await hstore.start()
    sinks: list[Any] = [hstore.submit]
    hm = None
    if metrics is not None:
        from ..metrics import HttpMetricsCollector

        hm = HttpMetricsCollector()
        metrics.collector.add_collector(hm)
        sinks.append(hm.observe)
    sched: Any
    if hc.workers > 1:
        from ..httpworkers import HttpWorkerPool

        sched = HttpWorkerPool(checks, hc.workers, max_concurrency=hc.max_concurrency,
                               resolve_cache_s=hc.resolve_cache_s, sinks=sinks,
                               rtt_of=rtts if hc.icmp else None)  # fmt: skip
    else:
        sched = HttpScheduler(checks, runner, sinks=sinks)
    log.info("HTTP checks", checks=len(checks), max_concurrency=hc.max_concurrency,
             workers=hc.workers, icmp_split=hc.icmp)  # fmt: skip
    task = asyncio.create_task(sched.run(), name="fastping-http")
    side = _HttpSide(sched, task, hstore, rtts, hm)
    sched.sinks.append(side.count)
    return side


def _reload(
    args: argparse.Namespace,
    engine: MonitoringEngine,
    current: dict[str, Wanted],
    shard: tuple[int, int] | None,
    log: Any,
    http: _HttpSide | None = None,
) -> None:
    """SIGHUP: read the configuration and target files again and add / remove the
    targets that changed in the running engine (the store, the metrics endpoint and
    every other target go on untouched; a removed target's probes in flight still get
    their result), and the HTTP checks likewise. A file that does not load leaves
    everything as it was."""
    from ..config import FastpingConfig, is_url, load_config
    from ..errors import FastpingError

    try:
        cfg = load_config(args.config) if args.config else FastpingConfig()
        iv = args.interval if args.interval is not None else cfg.defaults.interval_s
        to = args.timeout if args.timeout is not None else cfg.defaults.timeout_s
        checks = cfg.http_checks([t for t in args.targets if is_url(t)])
        if shard is not None:
            from ..shard import shard_of

            checks = [c for c in checks if shard_of(c.url, shard[1]) == shard[0]]
        new, _listed = _targets(args, cfg, shard, iv, to, bool(checks))
    except FastpingError as e:
        log.error("reload failed, still watching the previous targets", error=str(e))
        return
    if http is not None:
        h_added, h_removed = http.sched.replace(checks)
        if http.metrics is not None:
            http.metrics.keep_only(c.url for c in checks)
        log.info("reloaded HTTP checks", added=h_added, removed=h_removed,
                 checks=len(http.sched.checks))  # fmt: skip
    elif checks:
        log.warning("reload: HTTP checks appear only at start; restart the monitor for them",
                    checks=len(checks))  # fmt: skip
    wanted = {t[0]: t for t in new}
    removed = [h for h, t in current.items() if wanted.get(h) != t]
    added = [t for h, t in wanted.items() if current.get(h) != t]
    for h in removed:
        engine.remove_target(h)
        del current[h]
    refused = 0
    for host, t_iv, t_to, labels in added:
        try:
            engine.add_target(host, interval_s=t_iv, timeout_s=t_to, labels=labels)
        except FastpingError as e:
            refused += 1
            log.error("reload: target refused", target=host, error=str(e))
            continue
        current[host] = (host, t_iv, t_to, labels)
    set_labels = getattr(engine.store, "set_labels", None)  # a shared store keeps them
    if set_labels is not None:
        set_labels({host: labels for host, _, _, labels in added if host in current})
    log.info("reloaded targets", added=len(added) - refused, removed=len(removed),
             refused=refused, targets=len(current))  # fmt: skip


def _check_sockets(targets: list[Wanted], mode: str) -> None:
    """The monitor multiplexes every target through one socket per probe kind and
    family; the system ping cannot do that. So, before anything starts: a socket that
    cannot be opened (ICMP in auto mode: only the system ping would be left; TCP: no
    CAP_NET_RAW) is PermissionDenied (exit 4) saying what to do, as ``sweep --mode raw``
    is."""
    import socket

    from ..targets import Address, parse_target, split_kind

    needed: set[tuple[str, int]] = set()
    for host, *_ in targets:
        kt = split_kind(host)
        spec = parse_target(kt.host)[0]
        needed.add((kt.kind, spec.family if isinstance(spec, Address) else socket.AF_INET))
    for kind, fam in sorted(needed):
        if kind == "icmp":
            _check_icmp_socket(fam, mode)
        else:
            _check_kind_socket(kind, fam, mode)


def _check_icmp_socket(fam: int, mode: str) -> None:
    from ..errors import PermissionDenied
    from ..probe import UseSubprocess, open_icmp_socket

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
    from ..engine import SOCKET_KINDS
    from ..errors import PermissionDenied

    try:
        SOCKET_KINDS[kind](mode, {})(fam, 1).close()
    except PermissionError as e:
        raise PermissionDenied(
            f"{kind.upper()} targets need a raw socket in --mode raw, which needs root or "
            f"CAP_NET_RAW: {e.strerror or e}.\nGrant it (setcap cap_net_raw+ep on the python "
            "binary, or AmbientCapabilities=CAP_NET_RAW in the systemd unit), or use "
            "--mode auto / --mode connect (connect() timing, no privilege)."
        ) from None


class _TimingRecorder:
    """Hands the engine's send lateness to the database window by window (beside the
    results, in its own table), so `fastping report` shows the prober's own timing.
    A failed write is logged and counted, never fatal: the results matter more."""

    def __init__(self, engine: MonitoringEngine, db: str, log: Any, write: Any = None) -> None:
        from ..timing import SendLateness

        self.engine, self.db, self.log = engine, db, log
        # write(t0, t1, window, factor): a shared store's; else timing.write_window(db, ...)
        self.write = write
        self.last = SendLateness()
        self.t_last = time.time()
        self.failures = 0
        self.factor_max = 1.0  # the guard's largest interval factor in this window

    async def every(self, period_s: float) -> None:
        import asyncio

        n = max(1, round(period_s))
        while True:
            for _ in range(n):  # the guard's factor, looked at every second
                await asyncio.sleep(max(period_s, 1.0) / n)
                self.factor_max = max(self.factor_max, self.engine.interval_factor)
            await self.record()

    async def record(self) -> None:
        import asyncio

        from ..timing import delta, write_window

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
        from ..timing import behind_schedule_us

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


def get_engine_logger() -> Any:
    from ..logs import get_logger

    return get_logger("fastping.engine")


async def first_round(engine: MonitoringEngine, log: Any, after_s: float) -> None:
    """One line once every target has had its first probe's outcome (instead of a
    "state changed" line per target)."""
    import asyncio
    from collections import Counter

    await asyncio.sleep(after_s)
    counts = Counter(i.status for i in engine.targets())
    st = engine.stats()
    log.info(
        "monitor started: first round done",
        targets=st["targets"],
        interval_s=engine.interval_s,
        timeout_s=engine.timeout_s,
        **{k: counts.get(k, 0) for k in ("up", "down", "error", "unknown", "local_down")},
        interval_factor=st["interval_factor"],
        **({"tcp_timing": st["tcp_timing"]} if st["tcp_timing"] else {}),
    )


async def _summaries(engine: MonitoringEngine, log: Any) -> None:
    import asyncio

    last_sent = last_recv = 0
    while True:
        await asyncio.sleep(SUMMARY_EVERY_S)
        st = engine.stats()
        sent, recv = st["sent"], st["received"]
        d_sent, d_recv = sent - last_sent, recv - last_recv
        last_sent, last_recv = sent, recv
        store = st["store"] or {}
        log.info(
            "monitor summary",
            targets=st["targets"],
            sent=d_sent,
            received=d_recv,
            loss=round(1 - d_recv / d_sent, 4) if d_sent else None,
            timeouts=st["outcomes"]["timeout"],
            interval_factor=st["interval_factor"],
            store_queued=store.get("queued"),
            store_written=store.get("written"),
            store_dropped=store.get("dropped"),
            loop_lag_max_s=st["loop_lag_s"]["max"],
            send_late_p99_us=st["send_lateness"]["p99_us"],
            behind_schedule=st["send_lateness"]["behind_schedule"],
        )


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


LEGEND = (
    "status: up | down: timeout, unreachable (the target or its path) | error: local failure",
    "local_down: this host's own network is down | *: backing off after repeated local errors",
)


def _elapsed(seconds: float | None) -> str:
    s = int(seconds or 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _reason(i: Any) -> str:
    why = (i.last_outcome or "-").replace("_", " ")
    if i.backoff_s:
        why += f", {i.consecutive_errors} in a row, next try in {i.backoff_s:.0f} s"
    return why


def render_table(engine: MonitoringEngine, rows_max: int, width: int) -> str:
    """The live table as text (also used by tests)."""
    st = engine.stats()
    # only the rows shown are looked up (10,000 TargetInfo a second cost ~3% of a core)
    infos = engine.top_targets(rows_max)
    store = st["store"] or {}
    oc = st["outcomes"]
    head = (
        f"fastping monitor  {_elapsed(st['uptime_s'])}  targets {st['targets']}  "
        f"sent {st['sent']}  received {st['received']}  timeouts {oc['timeout']}  "
        f"unreachable {oc['unreachable'] + oc['time_exceeded']}  errors {oc['send_error']}  "
        f"stored {store.get('written', '-')}  queued {store.get('queued', '-')}"
    )
    if st["interval_factor"] != 1.0:
        head += (
            f"  SLOWED x{st['interval_factor']:g} by the resource guard "
            "(--max-cpu-percent / --max-memory-mb)"
        )
    if st["network_down"]:
        head += "  NETWORK DOWN"
    hw = max(20, min(40, max((len(i.host) for i in infos), default=6) + 2))
    lines = [head[:width], ""]
    lines.append(
        f"{'TARGET':<{hw}}{'STATUS':<12}{'LAST RTT ms':>12}{'LOSS':>8}{'PROBES':>9}  REASON"
    )
    for i in infos[:rows_max]:
        loss = "-" if i.loss is None else f"{100 * i.loss:.1f}%"
        status = i.status + ("*" if i.backoff_s else "")
        lines.append(
            f"{i.host[: hw - 1]:<{hw}}{status:<12}{_fmt_ms(i.last_rtt_ms):>12}{loss:>8}"
            f"{i.probes:>9}  {_reason(i)}"
        )
    if st["targets"] > rows_max:
        lines.append(f"... and {st['targets'] - rows_max} more (problems first)")
    lines.extend(LEGEND)
    return "\n".join(line[:width] for line in lines)


async def _table(engine: MonitoringEngine) -> None:
    import asyncio
    import shutil

    while True:
        size = shutil.get_terminal_size((100, 30))
        text = render_table(engine, max(1, size.lines - 7), size.columns)
        # home + clear to end: redraw in place without scrolling
        sys.stdout.write("\x1b[H\x1b[J" + text + "\n")
        sys.stdout.flush()
        await asyncio.sleep(1.0)
