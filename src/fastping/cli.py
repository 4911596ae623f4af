"""The ``fastping`` command. Start-up stays lean: only the chosen subcommand's
module is imported (a 65k sweep takes ~0.35 s, so start-up shows)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module in fastping.commands exposing add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "sweep": ("sweep", "probe many targets once (or -c N times) and report each"),
    "ping": ("ping", "ping one host, one line per reply"),
    "doctor": ("doctor", "which ICMP modes (raw, dgram, subprocess) work for you, and how to fix"),
    "netstate": ("netstate", "is this host's own network up? state, reason, interfaces"),
    "report": ("report", "statistics and latency charts from a monitor's database"),
    "monitor": ("monitor", "watch targets continuously and record every probe in SQLite"),
    "http": ("http", "check HTTP(S) URLs once, phase by phase, server time apart from path"),
    "trace": ("trace", "traceroute every target at once: each hop's router and RTT"),
    "mtu": ("mtu", "path MTU of every target at once; PMTUD black holes found and located"),
    "fping": ("fping", "fping 5.x's options and output on fastping's core (also fastping-fping)"),
}

# Exit statuses follow fping's convention.
EXIT_ALL_ALIVE = 0
EXIT_SOME_DOWN = 1
EXIT_UNRESOLVED = 2
EXIT_BAD_ARGS = 3
EXIT_SYSTEM_ERROR = 4


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="fastping",
        description="Watch very many hosts at once.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_mod, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(f"fastping.commands.{COMMANDS[name][0]}")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad arguments; fping's code for that is 3
        return EXIT_BAD_ARGS if e.code not in (0, None) else 0
    if args.version:
        from . import __version__

        print(f"fastping {__version__}")
        return 0
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_BAD_ARGS
    from .errors import ConfigError, FastpingError, PermissionDenied, TargetError

    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `fastping report | head`: the reader has what it wanted; a quiet exit, and
        # stdout pointed at /dev/null so the interpreter's final flush cannot fail too
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TargetError, ConfigError) as e:
        print(f"fastping: {e}", file=sys.stderr)
        return EXIT_BAD_ARGS
    except PermissionDenied as e:
        print(f"fastping: {e}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except FastpingError as e:
        print(f"fastping: {e}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except OSError as e:
        print(f"fastping: system error: {e}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR


if __name__ == "__main__":
    sys.exit(main())
