"""``fastping monitor``: watch targets continuously, record every probe in SQLite.

    fastping monitor                       # 127.0.0.1 and ::1 (loopback only)
    fastping monitor 10.0.0.1 gw.example --interval 0.5 --duration 60
    fastping monitor --config fastping.yaml --db /var/lib/fastping/fastping.db

On a terminal a live table (per target: status, last RTT, loss) is redrawn about
once a second; otherwise structured logs, with a summary line every 10 s. SIGINT /
SIGTERM stop cleanly: probes in flight get their timeout, every result is written,
and a final JSON summary goes to stdout.

The monitoring itself (store, network watch, engine, metrics, ...) is a
``fastping.agent.Agent``; this module turns the command line into its options and
targets, and owns the logging, the table, SIGHUP and the exit codes.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports stay inside run()
    from ..agent import Agent, AgentOptions, AgentTarget
    from ..config import FastpingConfig
    from ..engine import MonitoringEngine

DEFAULT_TARGETS = ("127.0.0.1", "::1")  # loopback only: a bare `fastping monitor` is safe
DEFAULT_DB = "fastping.db"  # agent.DEFAULT_DB
SUMMARY_EVERY_S = 10.0


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


def _expand(host: str) -> list[str]:
    """One user target -> targets for the engine (blocks and ranges expanded, bounded;
    ``tcp://10.0.0.0/30:22`` is each address on port 22)."""
    from ..agent import expand_target

    return expand_target(host)


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
    cfg: FastpingConfig,
    shard: tuple[int, int] | None,
    interval_s: float,
    timeout_s: float,
    http_only: bool = False,
) -> tuple[list[AgentTarget], int]:
    """The targets to watch (deduplicated, this shard's share) and how many were
    listed: the command line's, --file's, then the config's."""
    from ..agent import AgentTarget, config_targets, select_targets
    from ..config import is_url
    from ..errors import ConfigError

    wanted: list[AgentTarget] = []
    texts = [t for t in args.targets if not is_url(t)]  # URLs are HTTP checks
    if args.file and args.file.endswith(".json"):
        ported = _port_kind(args) is not None
        for host, labels in read_file_sd(args.file, keep_ports=ported):
            for text in _with_ports(args, [host]) if ported else [host]:
                wanted.extend(AgentTarget(h, interval_s, timeout_s, labels) for h in _expand(text))
    elif args.file:
        from ..targets import read_targets_file

        texts.extend(read_targets_file(args.file))
    for text in _with_ports(args, texts):
        wanted.extend(AgentTarget(h, interval_s, timeout_s, {}) for h in _expand(text))
    wanted.extend(config_targets(cfg, args.interval, args.timeout))
    if not wanted and http_only:
        return [], 0
    if not wanted:
        if args.config:
            raise ConfigError(
                f"{args.config}: no targets: list some under 'targets:' or on the command line"
            )
        wanted = [AgentTarget(h, interval_s, timeout_s, {}) for h in DEFAULT_TARGETS]
    return select_targets(wanted, shard)


def _options(args: argparse.Namespace, shard: tuple[int, int] | None) -> AgentOptions:
    """The flags that set something over the configuration, for the agent."""
    from ..agent import AgentOptions

    return AgentOptions(
        db=args.db,
        agent=args.agent,
        interval_s=args.interval,
        timeout_s=args.timeout,
        mode=args.mode,
        max_cpu_percent=args.max_cpu_percent,
        max_memory_mb=args.max_memory_mb,
        netstate=bool(args.netstate),
        outage_after=args.outage_after,
        outage_webhook=args.outage_webhook,
        trace_every_s=getattr(args, "trace_every", None),
        trace_on_outage=bool(getattr(args, "trace_on_outage", False)),
        mtu_on_change=bool(getattr(args, "mtu_on_change", False)),
        shard=shard,
        metrics_listen=args.metrics,
        resolver=getattr(args, "resolver", None),
        remote_write_url=args.remote_write,
        remote_write_interval_s=args.remote_write_interval,
        stop_timeout_s=args.stop_timeout,
    )


def _http_checks(
    args: argparse.Namespace, cfg: FastpingConfig, shard: tuple[int, int] | None
) -> list[Any]:
    """The config's HTTP checks and the command line's URLs, this shard's share."""
    from ..agent import shard_checks
    from ..config import is_url

    return shard_checks(cfg.http_checks([t for t in args.targets if is_url(t)]), shard)


def _agent(
    args: argparse.Namespace, cfg: FastpingConfig, shard: tuple[int, int] | None
) -> tuple[Agent, int]:
    """The agent of the command line and config (every bad setting refused here,
    before anything starts) and how many targets were listed."""
    from ..agent import Agent, resolve_settings
    from ..logs import get_logger

    opts = _options(args, shard)
    s = resolve_settings(cfg, opts)  # settings first: their errors before the targets'
    checks = _http_checks(args, cfg, shard)
    targets, listed = _targets(args, cfg, shard, s.interval_s, s.timeout_s, bool(checks))
    log = get_logger("fastping.monitor")
    return Agent(cfg, opts, targets=targets, http_checks=checks, log=log), listed


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..config import FastpingConfig, load_config
    from ..logs import configure_logging
    from ..shard import parse_shard

    cfg = load_config(args.config) if args.config else FastpingConfig()
    shard_text = args.shard or cfg.shard
    shard: tuple[int, int] | None = None
    if shard_text:
        shard = parse_shard(shard_text, "--shard" if args.shard else f"{args.config}: shard")
    if args.metrics:
        from ..metrics import parse_listen

        parse_listen(args.metrics, "--metrics")
    agent, listed = _agent(args, cfg, shard)

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
    log = agent.log
    if shard is not None:
        shard_txt = f"{shard[0]}/{shard[1]}"
        n = len(agent.initial_targets)
        log.info("sharding: this agent watches its share", shard=shard_txt, targets=n,
                 listed=listed)  # fmt: skip
        if not n:
            log.warning("this shard holds none of the listed targets", shard=shard_txt,
                        listed=listed)  # fmt: skip
    return asyncio.run(_main(args, agent, table, log))


async def _main(args: argparse.Namespace, agent: Agent, table: bool, log: Any) -> int:
    import asyncio
    import contextlib
    import json
    import signal

    loop = asyncio.get_running_loop()
    await agent.start()
    engine = agent.engine

    def reload() -> None:
        _reload(args, agent, log)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload)
    view = asyncio.create_task(_table(engine) if table else _summaries(engine, log))
    first = asyncio.create_task(first_round(engine, log, agent.first_round_s + 0.5))
    try:
        await agent.run(args.duration)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        for task in (view, first):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    summary = agent.summary()
    if table:
        sys.stdout.write("\n")
    print(json.dumps(summary), flush=True)
    if summary["store_dropped"]:
        print(
            f"fastping: {summary['store_dropped']} of {summary['results']} results were not "
            f"written to {summary['db']} (last error: "
            f"{summary['store_last_error'] or 'queue full'}); {summary['stored']} were",
            file=sys.stderr,
        )
        return 4
    return 0


def _reload(args: argparse.Namespace, agent: Agent, log: Any) -> None:
    """SIGHUP: read the configuration and target files again and have the agent add /
    remove the targets and HTTP checks that changed (the store, the metrics endpoint
    and every other target go on untouched; a removed target's probes in flight still
    get their result). A file that does not load leaves everything as it was."""
    from ..config import FastpingConfig, load_config
    from ..errors import FastpingError

    shard = agent.settings.shard
    try:
        cfg = load_config(args.config) if args.config else FastpingConfig()
        iv = args.interval if args.interval is not None else cfg.defaults.interval_s
        to = args.timeout if args.timeout is not None else cfg.defaults.timeout_s
        checks = _http_checks(args, cfg, shard)
        new, _listed = _targets(args, cfg, shard, iv, to, bool(checks))
    except FastpingError as e:
        log.error("reload failed, still watching the previous targets", error=str(e))
        return
    agent.apply(new, checks)


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
