"""What this process may do with ICMP (and how TCP probes are timed), and how to change it.

fastping can probe in three modes (see ``docs/modes.md``):

* ``raw``: a ``SOCK_RAW`` ICMP socket. Needs CAP_NET_RAW in the effective set
  (root has it unless a container dropped it; a binary can be given it with
  ``setcap``). See capabilities(7), raw(7).
* ``dgram``: a Linux "ping socket" (``SOCK_DGRAM`` + ``IPPROTO_ICMP[V6]``). No
  capability, but the caller's effective gid or one of its supplementary groups
  must lie inside ``net.ipv4.ping_group_range`` (icmp(7); the one sysctl governs
  ICMPv6 ping sockets too). Many distributions leave it at ``1 0``: nobody.
* ``subprocess``: the system ``ping`` binary (iputils or BusyBox), which itself
  needs setuid root, a file capability, or the dgram permission.

:func:`diagnose` gathers the facts (no packet is sent); :class:`Diagnosis`
turns them into per-mode verdicts and messages that name the exact fix.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["raw", "dgram", "subprocess"]
MODES: tuple[Mode, ...] = ("raw", "dgram", "subprocess")
ALL_MODES: tuple[str, ...] = ("auto", *MODES)

# capabilities(7): CAP_NET_RAW is capability number 13.
CAP_NET_RAW_BIT = 13
PROC_STATUS = "/proc/self/status"
PING_GROUP_RANGE_PATH = "/proc/sys/net/ipv4/ping_group_range"
# include/uapi/linux/capability.h: struct vfs_cap_data starts with magic_etc
# (revision | VFS_CAP_FLAGS_EFFECTIVE), then permitted[0], inheritable[0], ...
VFS_CAP_FLAGS_EFFECTIVE = 0x000001
# The widest range the sysctl accepts (gid_t is 32-bit; 2^31-1 is the documented maximum).
GID_MAX = 2147483647

PingFlavor = Literal["iputils", "busybox", "inetutils", "unknown"]


@dataclass(frozen=True, slots=True)
class PingBinary:
    """The system ``ping`` found on PATH."""

    path: str  # as found on PATH
    realpath: str  # symlinks resolved (BusyBox applets are symlinks to busybox)
    flavor: PingFlavor
    version: str  # first line of its version output, "" if unknown
    setuid_root: bool
    file_cap_net_raw: bool  # `setcap cap_net_raw+ep` (or +p with effective flag) on the file

    @property
    def privileged(self) -> bool:
        """Whether the binary can open a raw socket regardless of who runs it."""
        return self.setuid_root or self.file_cap_net_raw

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "realpath": self.realpath,
            "flavor": self.flavor,
            "version": self.version,
            "setuid_root": self.setuid_root,
            "file_cap_net_raw": self.file_cap_net_raw,
        }


@dataclass(frozen=True, slots=True)
class ModeStatus:
    """Verdict for one mode: can it work, why (facts), and what would fix it."""

    mode: Mode
    ok: bool
    reason: str
    fixes: tuple[str, ...] = ()
    verified: bool = False  # True when a socket was really opened / ping really ran

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "ok": self.ok,
            "verified": self.verified,
            "reason": self.reason,
            "fixes": list(self.fixes),
        }


@dataclass(frozen=True, slots=True)
class TcpStatus:
    """How TCP probes are timed (mode auto): "raw" (SYNs on a raw socket, kernel
    timestamps: CAP_NET_RAW) or "connect" (connect() timing, no privilege)."""

    timing: Literal["raw", "connect"]
    reason: str
    fixes: tuple[str, ...] = ()  # how to get raw timing
    verified: bool = False

    @property
    def label(self) -> str:
        if self.timing == "raw":
            return "raw SYN (kernel timestamps)"
        return "connect() fallback"

    def to_dict(self) -> dict[str, Any]:
        return {
            "timing": self.timing,
            "label": self.label,
            "verified": self.verified,
            "reason": self.reason,
            "fixes": list(self.fixes),
        }


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The facts about this process that decide which ICMP modes can work."""

    uid: int
    euid: int
    egid: int
    groups: tuple[int, ...]  # supplementary groups (os.getgroups())
    cap_eff: int | None  # CapEff mask from /proc/self/status; None if unreadable
    ping_group_range: tuple[int, int] | None  # None if the sysctl is unreadable
    ping: PingBinary | None
    python: str  # realpath of sys.executable: what `setcap` must name
    user: str = ""
    # Results of really opening sockets (errno or 0), filled by diagnose(verify=True).
    raw_open_errno: int | None = None
    dgram_open_errno: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # a raw IPPROTO_TCP socket of the family, opened by diagnose(verify=True)
    tcp_raw_open_errno: int | None = None

    # -- facts -----------------------------------------------------------
    @property
    def is_root(self) -> bool:
        return self.euid == 0

    @property
    def cap_net_raw(self) -> bool:
        if self.cap_eff is None:
            # Without /proc we cannot tell; root usually has it.
            return self.is_root
        return bool(self.cap_eff >> CAP_NET_RAW_BIT & 1)

    @property
    def all_gids(self) -> tuple[int, ...]:
        """Effective gid first, then the supplementary groups (the kernel checks both)."""
        return tuple(dict.fromkeys((self.egid, *self.groups)))

    @property
    def dgram_gids(self) -> tuple[int, ...]:
        """The caller's groups that lie inside ping_group_range."""
        if self.ping_group_range is None:
            return ()
        lo, hi = self.ping_group_range
        return tuple(g for g in self.all_gids if lo <= g <= hi)

    @property
    def range_text(self) -> str:
        if self.ping_group_range is None:
            return "unreadable (is /proc mounted? is this Linux?)"
        lo, hi = self.ping_group_range
        if lo > hi:
            return f'"{lo} {hi}" (closed: no group may open ping sockets)'
        return f'"{lo} {hi}"'

    # -- verdicts --------------------------------------------------------
    def status(self, mode: Mode) -> ModeStatus:
        if mode == "raw":
            return self._raw_status()
        if mode == "dgram":
            return self._dgram_status()
        if mode == "subprocess":
            return self._subprocess_status()
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")

    def statuses(self) -> list[ModeStatus]:
        return [self.status(m) for m in MODES]

    def working_modes(self) -> list[Mode]:
        return [s.mode for s in self.statuses() if s.ok]

    def best_mode(self) -> Mode | None:
        modes = self.working_modes()
        return modes[0] if modes else None

    def raw_fixes(self) -> tuple[str, ...]:
        return (
            f"grant the capability to this Python: sudo setcap cap_net_raw+ep {self.python}"
            " (every script run by that interpreter gets it: prefer a virtualenv's own copy)",
            "or run as root (sudo), or in a container add it: docker run --cap-add=NET_RAW",
        )

    def dgram_fixes(self) -> tuple[str, ...]:
        return (
            "open ping sockets to your group: sudo sysctl -w "
            f'net.ipv4.ping_group_range="{self.egid} {self.egid}"',
            'or to every group: sudo sysctl -w net.ipv4.ping_group_range="0 2147483647"',
            "make it permanent with a line net.ipv4.ping_group_range = 0 2147483647 in "
            "/etc/sysctl.d/60-fastping.conf",
        )

    def subprocess_fixes(self) -> tuple[str, ...]:
        if self.ping is None:
            return (
                "install a ping binary: sudo apt-get install iputils-ping "
                "(or busybox, or: sudo dnf install iputils)",
            )
        return (
            f"let {self.ping.realpath} open raw sockets: sudo setcap cap_net_raw+ep "
            f"{self.ping.realpath}",
            *self.dgram_fixes()[:2],
        )

    def _raw_status(self) -> ModeStatus:
        facts = (
            f"uid {self.uid} (euid {self.euid}), CAP_NET_RAW "
            f"{'present' if self.cap_net_raw else 'missing'} in the effective set"
        )
        if self.cap_eff is not None:
            facts += f" (CapEff {self.cap_eff:016x})"
        if self.raw_open_errno is not None:
            if self.raw_open_errno == 0:
                return ModeStatus("raw", True, f"raw ICMP socket opened; {facts}", verified=True)
            return ModeStatus(
                "raw",
                False,
                f"opening a raw ICMP socket failed: {os.strerror(self.raw_open_errno)}; {facts}",
                self.raw_fixes(),
                verified=True,
            )
        if self.cap_net_raw:
            return ModeStatus("raw", True, facts)
        return ModeStatus("raw", False, facts, self.raw_fixes())

    def _dgram_status(self) -> ModeStatus:
        groups = ", ".join(str(g) for g in self.all_gids)
        inside = self.dgram_gids
        facts = f"net.ipv4.ping_group_range is {self.range_text}; your groups are {groups}" + (
            f" ({', '.join(map(str, inside))} inside it)" if inside else " (none inside it)"
        )
        if self.dgram_open_errno is not None:
            if self.dgram_open_errno == 0:
                return ModeStatus(
                    "dgram", True, f"unprivileged ICMP socket opened; {facts}", verified=True
                )
            why = os.strerror(self.dgram_open_errno)
            if self.dgram_open_errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT):
                why += " (this kernel has no ping sockets; Linux >= 3.0 has them)"
            return ModeStatus(
                "dgram",
                False,
                f"opening an unprivileged ICMP socket failed: {why}; {facts}",
                self.dgram_fixes(),
                verified=True,
            )
        if inside:
            return ModeStatus("dgram", True, facts)
        return ModeStatus("dgram", False, facts, self.dgram_fixes())

    def _subprocess_status(self) -> ModeStatus:
        p = self.ping
        if p is None:
            return ModeStatus(
                "subprocess",
                False,
                "no ping binary on PATH (" + os.environ.get("PATH", "") + ")",
                self.subprocess_fixes(),
            )
        how = []
        if p.setuid_root:
            how.append("setuid root")
        if p.file_cap_net_raw:
            how.append("file capability cap_net_raw")
        if self.cap_net_raw:
            how.append("you have CAP_NET_RAW")
        if self.dgram_gids:
            how.append("ping sockets allowed for your group")
        desc = f"{p.path} ({p.version or p.flavor})"
        verified = "ping_verified_rc" in self.extra
        if verified:
            rc = int(self.extra["ping_verified_rc"])
            if rc == 0:
                return ModeStatus(
                    "subprocess", True, f"{desc} answered a ping to 127.0.0.1", verified=True
                )
            return ModeStatus(
                "subprocess",
                False,
                f"{desc} failed to ping 127.0.0.1 (exit {rc}): "
                f"{self.extra.get('ping_verified_output', '').strip()}",
                self.subprocess_fixes(),
                verified=True,
            )
        if how:
            return ModeStatus("subprocess", True, f"{desc}: {', '.join(how)}")
        return ModeStatus(
            "subprocess",
            False,
            f"{desc} is neither setuid nor has cap_net_raw, you lack CAP_NET_RAW and ping "
            "sockets are closed to your groups",
            self.subprocess_fixes(),
        )

    def tcp_status(self) -> TcpStatus:
        """How TCP probes are timed here (mode auto): raw SYNs with kernel timestamps
        when a raw TCP socket may be opened (CAP_NET_RAW), else connect()."""
        facts = f"CAP_NET_RAW {'present' if self.cap_net_raw else 'missing'} in the effective set"
        if self.cap_eff is not None:
            facts += f" (CapEff {self.cap_eff:016x})"
        err = self.tcp_raw_open_errno
        verified = err is not None
        ok = err == 0 if verified else self.cap_net_raw
        if ok:
            how = "raw TCP socket opened" if verified else "inferred"
            return TcpStatus("raw", f"{how}; {facts}", verified=verified)
        how = f"opening a raw TCP socket failed: {os.strerror(err)}" if err else "no raw TCP socket"
        return TcpStatus(
            "connect",
            f"{how}; {facts}. Each probe is a non-blocking connect() (the kernel sends the "
            "SYN, the SYN-ACK ends it, a RST closes it, no data is sent); RTT includes "
            "user-space scheduling, no TTL",
            self.raw_fixes(),
            verified=verified,
        )

    # -- messages --------------------------------------------------------
    def explain(self, mode: Mode) -> str:
        """One paragraph: why ``mode`` cannot work here and what to run to fix it."""
        st = self.status(mode)
        text = f"{mode} mode: {st.reason}"
        if st.fixes:
            text += ". To fix: " + "; ".join(st.fixes)
        return text

    def explain_none(self) -> str:
        """The message for when no mode works at all (names CAP_NET_RAW and the sysctl)."""
        parts = [
            "fastping cannot send ICMP as user "
            f"{self.user or self.uid}: no mode works. It needs CAP_NET_RAW (raw mode), "
            "net.ipv4.ping_group_range covering your group (dgram mode), or a usable system "
            "ping (subprocess mode)."
        ]
        for m in MODES:
            parts.append(self.explain(m) + ".")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        best = self.best_mode()
        return {
            "user": self.user,
            "uid": self.uid,
            "euid": self.euid,
            "egid": self.egid,
            "groups": list(self.groups),
            "is_root": self.is_root,
            "cap_net_raw": self.cap_net_raw,
            "cap_eff": None if self.cap_eff is None else f"{self.cap_eff:016x}",
            "ping_group_range": None
            if self.ping_group_range is None
            else list(self.ping_group_range),
            "dgram_gids": list(self.dgram_gids),
            "python": self.python,
            "ping": None if self.ping is None else self.ping.to_dict(),
            "modes": {s.mode: s.to_dict() for s in self.statuses()},
            "auto_mode": best,
            "tcp": self.tcp_status().to_dict(),
        }


# -- fact gathering ----------------------------------------------------------


def read_cap_eff(path: str = PROC_STATUS) -> int | None:
    """The effective capability mask of this process (``CapEff:`` in proc(5))."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def parse_ping_group_range(text: str) -> tuple[int, int]:
    """``"1\\t0\\n"`` -> (1, 0). Raises ValueError on anything else."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected two numbers, got {text!r}")
    return int(parts[0]), int(parts[1])


def read_ping_group_range(path: str = PING_GROUP_RANGE_PATH) -> tuple[int, int] | None:
    try:
        with open(path, encoding="ascii") as f:
            return parse_ping_group_range(f.read())
    except (OSError, ValueError):
        return None


def file_has_cap_net_raw(path: str) -> bool:
    """Whether ``path`` carries CAP_NET_RAW as a permitted+effective file capability."""
    try:
        data = os.getxattr(path, "security.capability")
    except (OSError, AttributeError):
        return False
    if len(data) < 12:
        return False
    magic = int.from_bytes(data[0:4], "little")
    permitted = int.from_bytes(data[4:8], "little")
    return bool(magic & VFS_CAP_FLAGS_EFFECTIVE) and bool(permitted >> CAP_NET_RAW_BIT & 1)


def ping_flavor_from_version(text: str, realpath: str = "") -> PingFlavor:
    """Classify a ping by its version output (``ping -V``) or by being busybox."""
    low = text.lower()
    if os.path.basename(realpath) == "busybox" or "busybox" in low:
        return "busybox"
    if "iputils" in low:
        return "iputils"
    if "inetutils" in low:
        return "inetutils"
    return "unknown"


def find_ping(path_env: str | None = None) -> PingBinary | None:
    """The ``ping`` on PATH (``path_env`` overrides $PATH), or None."""
    found = shutil.which("ping", path=path_env)
    if found is None:
        return None
    real = os.path.realpath(found)
    version = ""
    try:
        # iputils: "ping from iputils 20221126"; BusyBox prints its usage (with
        # "BusyBox v1.35") to stderr and exits 1; GNU inetutils: "--version".
        out = subprocess.run(
            [found, "-V"],
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "LC_ALL": "C"},
        )
        text = (out.stdout + out.stderr).strip()
        flavor = ping_flavor_from_version(text, real)
        if flavor == "unknown":
            out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=5)
            text = (out.stdout + out.stderr).strip()
            flavor = ping_flavor_from_version(text, real)
        version = _version_line(text, flavor)
    except (OSError, subprocess.SubprocessError):
        flavor = ping_flavor_from_version("", real)
    try:
        st = os.stat(real)
        setuid_root = bool(st.st_mode & stat.S_ISUID) and st.st_uid == 0
    except OSError:
        setuid_root = False
    return PingBinary(found, real, flavor, version, setuid_root, file_has_cap_net_raw(real))


def _version_line(text: str, flavor: str) -> str:
    for line in text.splitlines():
        low = line.lower()
        if flavor in low or "version" in low:
            return line.strip()
    return ""


def try_open(family: int, kind: Literal["raw", "dgram"]) -> int:
    """Open and close an ICMP socket of ``kind`` (no packet is sent); 0 or the errno."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    stype = socket.SOCK_RAW if kind == "raw" else socket.SOCK_DGRAM
    try:
        s = socket.socket(family, stype, proto)
    except OSError as e:
        return e.errno or errno.EPERM
    s.close()
    return 0


def try_open_raw_tcp(family: int) -> int:
    """Open and close a raw IPPROTO_TCP socket (no packet is sent); 0 or the errno."""
    try:
        s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP)
    except OSError as e:
        return e.errno or errno.EPERM
    s.close()
    return 0


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def diagnose(
    *,
    verify: bool = False,
    family: int = socket.AF_INET,
    path_env: str | None = None,
    ping_target: str = "127.0.0.1",
) -> Diagnosis:
    """Gather the facts. With ``verify``, also really open a raw and a dgram socket
    of ``family`` (no packet is sent) and run ``ping -c 1`` against the loopback
    ``ping_target`` so the verdicts are observed, not inferred."""
    cap_eff = read_cap_eff()
    ping = find_ping(path_env)
    extra: dict[str, Any] = {}
    raw_err = dgram_err = tcp_err = None
    if verify:
        raw_err = try_open(family, "raw")
        dgram_err = try_open(family, "dgram")
        tcp_err = try_open_raw_tcp(family)
        if ping is not None:
            rc, output = _verify_ping(ping, ping_target)
            extra["ping_verified_rc"] = rc
            extra["ping_verified_output"] = output
    return Diagnosis(
        uid=os.getuid(),
        euid=os.geteuid(),
        egid=os.getegid(),
        groups=tuple(os.getgroups()),
        cap_eff=cap_eff,
        ping_group_range=read_ping_group_range(),
        ping=ping,
        python=os.path.realpath(sys.executable),
        user=_user_name(os.geteuid()),
        raw_open_errno=raw_err,
        dgram_open_errno=dgram_err,
        extra=extra,
        tcp_raw_open_errno=tcp_err,
    )


def _verify_ping(ping: PingBinary, target: str) -> tuple[int, str]:
    """Run one ping to a loopback address (never anything else) and report the exit code."""
    import ipaddress

    if not ipaddress.ip_address(target).is_loopback:
        raise ValueError(f"verification ping target must be loopback, not {target!r}")
    argv = [ping.path, "-c", "1", "-W", "1"]
    if ping.flavor == "iputils":
        argv.insert(1, "-n")
    argv += ["--", target]  # iputils and BusyBox both end options at "--"
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=5, env={**os.environ, "LC_ALL": "C"}
        )
    except (OSError, subprocess.SubprocessError) as e:
        return 127, str(e)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return out.returncode, " | ".join(lines[-3:]) if out.returncode else ""
