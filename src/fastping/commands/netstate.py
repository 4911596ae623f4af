"""``fastping netstate``: is this host's own network up? State, reason and the
interface table; ``--watch`` streams changes, ``--json`` one JSON object per line."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..netstate import InterfaceStats, NetworkMonitor, StateChange


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check-host",
        action="append",
        default=None,
        metavar="HOST",
        help="verify connectivity by probing HOST (repeatable; presets: gateway, public). "
        "Without check hosts the state comes from netlink alone (unverified).",
    )
    parser.add_argument("--watch", action="store_true", help="keep running, print each change")
    parser.add_argument(
        "--json", action="store_true", help="JSON output; with --watch one line per change"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="with --watch: stop after S seconds",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="S",
        help="periodic check interval in seconds (default 10)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="check timeout in seconds (default 5)",
    )
    parser.add_argument(
        "--iface",
        action="append",
        default=None,
        metavar="NAME",
        help="consider only this interface (repeatable, glob patterns allowed)",
    )
    parser.add_argument(
        "--no-netlink", action="store_true", help="do not use netlink: periodic checks only"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML file whose `network:` section holds the settings"
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..netstate import NetworkConfig

    overrides: dict[str, Any] = {}
    if args.check_host:
        overrides["check_hosts"] = tuple(args.check_host)
    if args.interval is not None:
        overrides["check_interval"] = args.interval
    if args.timeout is not None:
        overrides["check_timeout"] = args.timeout
    if args.iface:
        overrides["preferred_ifaces"] = tuple(args.iface)
    if args.no_netlink:
        overrides["enable_netlink"] = False
    if args.duration is not None and args.duration <= 0:
        from ..errors import ConfigError

        raise ConfigError("--duration must be a positive number of seconds")
    config = _load_config(args.config)
    mapping = {k: getattr(config, k) for k in NetworkConfig.KEYS}
    mapping.update(overrides)
    config = NetworkConfig(**mapping)
    return asyncio.run(_main(args, config))


def _load_config(path: str | None) -> Any:
    from ..errors import ConfigError
    from ..netstate import NetworkConfig

    if path is None:
        return NetworkConfig()
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return NetworkConfig.from_mapping(doc.get("network"))


async def _main(args: argparse.Namespace, config: Any) -> int:
    import asyncio
    import json
    import signal
    import sys
    import time

    from ..netstate import NetworkMonitor, NetworkState, StateChange

    mon = NetworkMonitor(config)
    await mon.start()
    try:
        if not args.watch:
            stats = mon.interface_stats()
            if args.json:
                print(
                    json.dumps(
                        {
                            "state": mon.state.value,
                            "reason": mon.reason,
                            "verified": mon.verified,
                            "netlink": mon.netlink_active,
                            "time": round(time.time(), 6),
                            "interfaces": {
                                n: {**s.to_dict(), "status": mon.interfaces.get(n)}
                                for n, s in stats.items()
                            },
                        }
                    )
                )
            else:
                _print_summary(mon, stats)
            return 0 if mon.is_up else 1

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sub = mon.subscribe()
        # The current state first, as a change from "unknown", so a reader of
        # the stream always starts from a known state.
        first = StateChange(
            NetworkState.UNKNOWN, mon.state, mon.reason, time.time(), mon.interfaces, mon.verified
        )
        if not args.json:
            _print_summary(mon, mon.interface_stats())
        _emit(first, args.json)

        async def pump() -> None:
            async for change in sub:
                _emit(change, args.json)

        pump_task = asyncio.create_task(pump())
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait(
            {pump_task, stop_task}, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED
        )
        sub.close()
        stop_task.cancel()
        await asyncio.gather(pump_task, stop_task, return_exceptions=True)
        sys.stdout.flush()
        return 0 if mon.is_up else 1
    finally:
        await mon.stop()


def _emit(change: StateChange, as_json: bool) -> None:
    import json
    import time

    if as_json:
        print(json.dumps(change.to_dict()), flush=True)
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(change.time))
    ms = int((change.time % 1) * 1000)
    verified = "" if change.verified else " (unverified)"
    print(
        f"{stamp}.{ms:03d} {change.previous.value} -> {change.state.value}{verified}: "
        f"{change.reason}",
        flush=True,
    )


def _print_summary(mon: NetworkMonitor, stats: dict[str, InterfaceStats]) -> None:
    verified = "verified" if mon.verified else "unverified"
    source = "netlink" if mon.netlink_active else "periodic checks"
    print(f"state:  {mon.state.value} ({verified}, {source})")
    print(f"reason: {mon.reason}")
    header = (
        "IFACE",
        "STATUS",
        "UP",
        "RUN",
        "MTU",
        "MAC",
        "RX_BYTES",
        "TX_BYTES",
        "RX_ERR",
        "TX_ERR",
        "RX_DROP",
        "TX_DROP",
    )
    rows = [header]
    for name, s in stats.items():
        rows.append(
            (
                name,
                mon.interfaces.get(name, "-"),
                "yes" if s.up else "no",
                "yes" if s.running else "no",
                str(s.mtu),
                s.mac or "-",
                str(s.rx_bytes),
                str(s.tx_bytes),
                str(s.rx_errors),
                str(s.tx_errors),
                str(s.rx_drops),
                str(s.tx_drops),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
