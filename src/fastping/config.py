"""The YAML configuration file, validated by pydantic.

``load_config(path)`` returns a ``FastpingConfig`` or raises ``ConfigError`` with
one line per problem, each naming the key path, the bad value, what is allowed and
where in the file it is::

    targets[2].interval_s: -1 is not allowed: must be >= 0.001 (fastping.yaml, line 9)

See ``examples/fastping.yaml`` for every key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, TargetError
from .guard import DEFAULT_MAX_CPU_PERCENT, DEFAULT_MAX_MEMORY_MB
from .netstate import NetworkConfig
from .retry import RetryConfig
from .settings import Model as _Model
from .settings import Seconds, error_text, parse_listen, show
from .shard import parse_shard
from .targets import parse_target, split_host_port, split_kind, with_kind

Mode = Literal["auto", "raw", "dgram", "subprocess", "connect"]
ProbeKind = Literal["icmp", "tcp", "udp", "dns"]  # targets.PROBE_KINDS
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


# Limits the engine and the socket enforce, stated here so a config that could never
# probe is refused at load, naming the limit.
MIN_INTERVAL_S = 0.001  # engine.MIN_INTERVAL_S: a shorter interval spins the loop
MAX_TIMEOUT_S = 3600.0
PAYLOAD_MIN = 16  # the probe header (slot, serial, cookie) every payload carries
PAYLOAD_MAX = 65000  # IcmpSocket's limit

# Hostile YAML: a "billion laughs" alias bomb expands a few hundred bytes into
# billions of nodes, deep nesting exhausts the stack. Both are refused from the
# composed node graph, before anything is constructed.
MAX_CONFIG_BYTES = 16 << 20
MAX_NODES = 2_000_000  # nodes after alias expansion (10k targets with labels: ~100k)
MAX_DEPTH = 64
# brackets outside quotes and comments: PyYAML's scanner takes time quadratic in the
# depth of flow collections ("[[[[..." 100k deep: seconds), so their depth is checked
# before it runs
_FLOW = re.compile(r"""[\[\]{}]|"(?:[^"\\\n]|\\.)*"|'(?:[^'\n]|'')*'|(?:^|(?<=\s))#[^\n]*""", re.M)


class Defaults(_Model):
    """Probe settings for targets that do not set their own."""

    interval_s: Seconds = Field(default=1.0, ge=MIN_INTERVAL_S, le=86400)
    timeout_s: Seconds = Field(default=1.0, gt=0, le=MAX_TIMEOUT_S)
    payload_size: int = Field(default=56, ge=PAYLOAD_MIN, le=PAYLOAD_MAX)


class TargetConfig(_Model):
    """One target; unset fields take ``defaults``. ``host`` may carry its probe kind
    (``tcp://10.0.0.1:22``), or ``kind`` and ``port`` say it (``{host: 10.0.0.1,
    kind: tcp, port: 22}``); without either it is pinged (ICMP)."""

    host: str
    interval_s: Seconds | None = Field(default=None, ge=MIN_INTERVAL_S, le=86400)
    timeout_s: Seconds | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    payload_size: int | None = Field(default=None, ge=PAYLOAD_MIN, le=PAYLOAD_MAX)
    labels: dict[str, str] = Field(default_factory=dict)
    kind: ProbeKind | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _host_port(cls, data: Any) -> Any:
        # ``host: 10.0.0.1:22`` (``[::1]:22``) is short for {host: 10.0.0.1, port: 22}: a
        # port alone means TCP, ``kind: udp`` makes it UDP (as Prometheus writes targets)
        if isinstance(data, dict) and isinstance(data.get("host"), str):
            hp = split_host_port(data["host"])
            if hp is not None and not is_url(data["host"]):
                if data.get("port") not in (None, hp[1]):
                    raise ValueError(
                        f"{data['host']!r} names its port already: drop port: {data['port']}"
                    )
                data = {**data, "host": hp[0], "port": hp[1]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _dns_entry(cls, v: Any) -> Any:
        # {kind: dns, server: S[:P], name: N, type: T} is short for host: dns://S[:P]/N?type=T
        if not isinstance(v, Mapping) or not ({"server", "name", "type"} & set(v)):
            return v
        if v.get("kind") != "dns":
            raise ValueError(
                "server, name and type are the keys of a DNS target: add kind: dns "
                "(or write host: dns://SERVER/NAME?type=T)"
            )
        if "host" in v:
            raise ValueError(
                "a DNS target gives either host: dns://... or server/name/type, not both"
            )
        d = dict(v)
        d.pop("kind")
        d["host"] = dns_url(d.pop("server", None), d.pop("name", None), d.pop("type", "A"))
        return d

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if is_url(v):  # an HTTP(S) check with the http: section's settings
            _check_url(v)
            return v.strip()
        try:
            parse_target(split_kind(v).host)
        except TargetError as e:
            raise ValueError(str(e)) from None
        return v.strip()

    @model_validator(mode="after")
    def _kind_port(self) -> TargetConfig:
        if not is_url(self.host):
            try:
                with_kind(self.host, self.kind, self.port)
            except TargetError as e:
                raise ValueError(str(e)) from None
        elif self.kind is not None or self.port is not None:
            raise ValueError(f"{self.host!r} is an HTTP check: kind and port are for probes")
        return self

    @property
    def label(self) -> str:
        """What the monitor watches (a block or range is expanded later): the host for
        ICMP, ``tcp://host:port`` for TCP; the URL of an HTTP check."""
        if is_url(self.host):
            return self.host
        return with_kind(self.host, self.kind, self.port).label


def dns_url(server: Any, name: Any, qtype: Any = "A") -> str:
    """``dns://SERVER/NAME?type=T`` of a server (an address, ``ADDR:PORT``,
    ``[V6]:PORT`` or a bare IPv6 address), a name and a type, checked; ValueError saying
    what is wrong."""
    import ipaddress

    from .commands.dnssweep import parse_dns_target

    examples = {"server": "127.0.0.1:5353", "name": "example.com", "type": "A, AAAA, MX..."}
    for key, val in (("server", server), ("name", name), ("type", qtype)):
        if not isinstance(val, str) or not val.strip():
            raise ValueError(f"a DNS target needs {key}: a string ({examples[key]}), not {val!r}")
    srv = server.strip()
    try:  # a bare IPv6 address: bracket it
        if ipaddress.ip_address(srv).version == 6:
            srv = f"[{srv}]"
    except ValueError:
        pass
    url = f"dns://{srv}/{name.strip()}?type={qtype.strip()}"
    try:
        return parse_dns_target(url).url
    except TargetError as e:
        raise ValueError(str(e)) from None


def _dns_server(v: str) -> str:
    try:
        dns_url(v, "a.test")
    except ValueError:
        raise ValueError(
            "not a DNS server: write an address, ADDR:PORT or [V6]:PORT (port 1..65535; a "
            "host name is refused: say which address you mean)"
        ) from None
    return v.strip()


def _dns_name(v: str) -> str:
    from ._icmp import dns_name_wire

    try:
        dns_name_wire(v.strip())
    except ValueError as e:
        raise ValueError(f"not a DNS name: {e}") from None
    return v.strip()


def _dns_type(v: str) -> str:
    from ._icmp import dns_qtype

    try:
        dns_qtype(v.strip().upper())
    except ValueError as e:
        raise ValueError(str(e)) from None
    return v.strip().upper()


_DnsServer = Annotated[str, AfterValidator(_dns_server)]
_DnsName = Annotated[str, AfterValidator(_dns_name)]
_DnsType = Annotated[str, AfterValidator(_dns_type)]


class DnsMatrix(_Model):
    """``dns:``: every server asked every name (each type): a target per
    (server, name, type), with these settings (unset: ``defaults``)."""

    servers: list[_DnsServer] = Field(min_length=1)
    names: list[_DnsName] = Field(min_length=1)
    type: _DnsType | list[_DnsType] = "A"
    interval_s: Seconds | None = Field(default=None, ge=MIN_INTERVAL_S, le=86400)
    timeout_s: Seconds | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _some_type(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one type (A, AAAA, ...)")
        return v

    def types(self) -> list[str]:
        return [self.type] if isinstance(self.type, str) else list(self.type)

    def urls(self) -> list[str]:
        """The targets, server by server, name by name, type by type."""
        return [dns_url(s, n, t) for s in self.servers for n in self.names for t in self.types()]

    def target_configs(self) -> list[TargetConfig]:
        return [
            TargetConfig(
                host=u,
                interval_s=self.interval_s,
                timeout_s=self.timeout_s,
                labels=dict(self.labels),
            )  # fmt: skip
            for u in self.urls()
        ]


def is_url(text: str) -> bool:
    """An ``http://`` / ``https://`` target: an HTTP check, not an ICMP target."""
    t = text.strip().lower()
    return t.startswith("http://") or t.startswith("https://")


def _check_url(v: str) -> None:
    from urllib.parse import urlsplit

    try:
        u = urlsplit(v.strip())
        u.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as e:
        raise ValueError(f"not a URL: {e}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")


class HttpCheckConfig(_Model):
    """One HTTP(S) check (``fastping.http.HttpCheck``); unset fields take ``http.defaults``."""

    url: str
    interval_s: Seconds | None = Field(default=None, ge=0.1, le=86400)
    timeout_s: Seconds | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S)
    method: str | None = None
    follow_redirects: bool | None = None
    max_redirects: int | None = Field(default=None, ge=0, le=100)
    expect_status: list[int] | None = None
    body_regex: str | None = None
    json_field: str | None = None
    json_value: Any = None
    verify_tls: bool | None = None
    ca_file: str | None = None
    server_name: str | None = None
    cert_min_days: float | None = Field(default=None, ge=0)
    source_address: str | None = None
    family: Literal[0, 4, 6] | None = None
    all_addresses: bool | None = None
    reuse_connection: bool | None = None
    headers: dict[str, str] | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        _check_url(v)
        return v.strip()

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        import re

        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return v


class HttpDefaults(_Model):
    """Settings for HTTP checks that do not set their own (a check's keys)."""

    interval_s: Seconds = Field(default=60.0, ge=0.1, le=86400)
    timeout_s: Seconds = Field(default=10.0, gt=0, le=MAX_TIMEOUT_S)
    follow_redirects: bool = True
    max_redirects: int = Field(default=10, ge=0, le=100)
    verify_tls: bool = True
    ca_file: str | None = None
    cert_min_days: float = Field(default=0.0, ge=0)
    all_addresses: bool = True
    reuse_connection: bool = False


class HttpConfig(_Model):
    """The ``http:`` section: checks beside the ICMP engine."""

    defaults: HttpDefaults = HttpDefaults()  # frozen, so one shared default is safe
    checks: list[HttpCheckConfig] = Field(default_factory=list)
    max_concurrency: int = Field(default=256, ge=1, le=100_000)
    # processes running the checks (one event loop each; 1: in the monitor's own loop)
    workers: int = Field(default=1, ge=1, le=64)
    # a name's addresses serve every check of that name for this long (0: resolve at
    # every check); Go's resolver, and so blackbox_exporter, caches /etc/hosts for 5 s
    resolve_cache_s: Seconds = Field(default=5.0, ge=0, le=86400)
    # ping each checked address too, for the path/server split (off: TCP connect RTT)
    icmp: bool = True

    @field_validator("checks", mode="before")
    @classmethod
    def _url_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"url": t} if isinstance(t, str) else t for t in v]
        return v


def _url_of(v: str | None, schemes: tuple[str, ...], msg: str) -> str | None:
    """A URL field's check: None, or a URL of one of ``schemes`` (ValueError ``msg``)."""
    if v is not None and not v.startswith(schemes):
        raise ValueError(msg)
    return v


class StoreConfig(_Model):
    path: str = "fastping.db"
    retention_s: Seconds = Field(default=7 * 86400.0, gt=0)
    batch_size: int = Field(default=1000, gt=0)
    flush_interval_s: Seconds = Field(default=0.5, gt=0)
    max_queue: int = Field(default=1_000_000, gt=0)
    # seconds of a target's results per stored row: the engine hands the core's log
    # of replies and timeouts to the store this often, and the store holds other
    # results as long to pack them with their target's; a kill -9 loses at most this
    chunk_s: Seconds = Field(default=10.0, gt=0, le=3600)
    # a shared PostgreSQL database instead of the SQLite file (postgresql://...), the
    # name this agent's rows carry there (default: host name, #i/n when sharded), and
    # the length of its time partitions (retention drops whole partitions)
    url: str | None = None
    agent: str | None = None
    partition_s: Seconds = Field(default=3600.0, ge=60)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _url_of(v, ("postgresql://", "postgres://"),
                       "must be a postgresql:// URL (store.path is for SQLite)")  # fmt: skip


class RemoteWriteConfig(_Model):
    # Prometheus remote write: push the scrape endpoint's series to this URL
    url: str | None = None
    interval_s: Seconds = Field(default=15.0, gt=0)
    timeout_s: Seconds = Field(default=10.0, gt=0)
    # added to every series (a scrape gets job / instance from Prometheus; a push
    # names them itself: job "fastping", instance the agent, unless given here)
    labels: dict[str, str] = Field(default_factory=dict)
    # extra HTTP headers, e.g. {Authorization: "Bearer ..."} or a tenant header
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _url_of(v, ("http://", "https://"), "must be an http:// or https:// URL")


class ResourcesConfig(_Model):
    max_cpu_percent: float = Field(default=DEFAULT_MAX_CPU_PERCENT, gt=0)
    max_memory_mb: float = Field(default=DEFAULT_MAX_MEMORY_MB, gt=0)
    check_interval_s: Seconds = Field(default=5.0, gt=0)


class LoggingConfig(_Model):
    level: LogLevel = "INFO"
    file: str | None = None
    max_bytes: int = Field(default=10_000_000, ge=0)
    backup_count: int = Field(default=5, ge=0)
    console: bool = True
    format: Literal["console", "json"] = "console"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


T = TypeVar("T")


def _one_grammar(parse: Callable[[str, str], T], v: str) -> T:
    """A field parsed by the command line's own parser, its ConfigError as the
    ValueError pydantic reports (with the field's place in the file)."""
    try:
        return parse(v, "")
    except ConfigError as e:
        msg = str(e).strip()  # "'VALUE': how to write it"; pydantic names the value itself
        msg = msg.removeprefix(f"{v!r}:").strip()
        raise ValueError(msg) from None


class MetricsConfig(_Model):
    listen: str | None = None  # "host:port" for the Prometheus exporter

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            _one_grammar(parse_listen, v)  # the same grammar as --metrics
        return v


class TraceConfig(_Model):
    """``trace:``: the monitor traces every ICMP target every ``every_s`` seconds
    (``--trace-every``; None: never), path changes as events, stored and counted;
    with ``on_outage`` (``--trace-on-outage``) a target whose outage starts at once."""

    every_s: Seconds | None = Field(default=None, ge=1.0, le=86400 * 7)
    max_ttl: int = Field(default=16, ge=1, le=64)
    timeout_s: Seconds = Field(default=1.0, gt=0, le=60)
    rate_pps: float = Field(default=1000.0, gt=0, le=10_000_000)
    on_outage: bool = False  # also trace a target at once when its outage starts
    # measure each target's path MTU at its first trace and after each path change
    mtu_on_change: bool = False


class FastpingConfig(_Model):
    mode: Mode = "auto"
    defaults: Defaults = Defaults()  # frozen, so one shared default is safe
    targets: list[TargetConfig] = Field(default_factory=list)
    store: StoreConfig = StoreConfig()  # frozen, so one shared default is safe
    resources: ResourcesConfig = ResourcesConfig()  # frozen, so one shared default is safe
    logging: LoggingConfig = LoggingConfig()  # frozen, so one shared default is safe
    # the models of the modules that use them (a mapping, or a profile name)
    network: NetworkConfig = NetworkConfig()  # frozen, so one shared default is safe
    retry: RetryConfig = RetryConfig()  # frozen, so one shared default is safe
    metrics: MetricsConfig = MetricsConfig()  # frozen, so one shared default is safe
    remote_write: RemoteWriteConfig = RemoteWriteConfig()  # frozen, so one shared default is safe
    shard: str | None = None  # "i/n": this agent watches share i of n (0 <= i < n)
    http: HttpConfig = HttpConfig()  # frozen, so one shared default is safe
    trace: TraceConfig = TraceConfig()  # frozen, so one shared default is safe
    # resolvers x names matrices (one mapping or a list of them), expanded into targets
    dns: list[DnsMatrix] = Field(default_factory=list)
    # host-name targets resolved by this DNS server (dnsresolve.DnsResolver), on TTL
    resolver: str | None = None

    @field_validator("resolver")
    @classmethod
    def _resolver(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from .dnsresolve import parse_server

        try:
            parse_server(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v.strip()

    @field_validator("dns", mode="before")
    @classmethod
    def _dns_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, Mapping) else v

    @field_validator("targets", mode="before")
    @classmethod
    def _target_strings(cls, v: Any) -> Any:
        # a bare string is short for {host: ...}
        if isinstance(v, list):
            return [{"host": t} if isinstance(t, str) else t for t in v]
        return v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        if v is None:
            return v
        i, n = _one_grammar(parse_shard, v)  # the same grammar as --shard
        return f"{i}/{n}"

    def target_settings(self, t: TargetConfig) -> tuple[float, float, int]:
        """(interval_s, timeout_s, payload_size) of a target, defaults filled in."""
        d = self.defaults
        return (
            d.interval_s if t.interval_s is None else t.interval_s,
            d.timeout_s if t.timeout_s is None else t.timeout_s,
            d.payload_size if t.payload_size is None else t.payload_size,
        )

    def http_checks(self, extra_urls: Sequence[str] = ()) -> list[Any]:
        """Every HTTP check: ``http.checks``, the ``http(s)://`` entries of ``targets``
        and ``extra_urls`` (the command line), as ``fastping.http.HttpCheck``, each URL
        once (the first entry wins), defaults filled in."""
        import socket

        from .http import HttpCheck

        d = self.http.defaults
        entries: list[HttpCheckConfig] = list(self.http.checks)
        for t in self.targets:
            if is_url(t.host):
                iv = t.interval_s if t.interval_s is not None else None
                entries.append(HttpCheckConfig(url=t.host, interval_s=iv, timeout_s=t.timeout_s,
                                               labels=dict(t.labels)))  # fmt: skip
        entries += [HttpCheckConfig(url=u) for u in extra_urls]
        out: list[HttpCheck] = []
        seen: set[str] = set()
        fam = {0: 0, 4: socket.AF_INET, 6: socket.AF_INET6}
        for e in entries:
            if e.url in seen:
                continue
            seen.add(e.url)

            def pick(v: Any, default: Any) -> Any:
                return default if v is None else v

            out.append(
                HttpCheck(
                    e.url,
                    method=pick(e.method, "GET"),
                    timeout_s=pick(e.timeout_s, d.timeout_s),
                    interval_s=pick(e.interval_s, d.interval_s),
                    follow_redirects=pick(e.follow_redirects, d.follow_redirects),
                    max_redirects=pick(e.max_redirects, d.max_redirects),
                    expect_status=tuple(e.expect_status or ()),
                    body_regex=e.body_regex,
                    json_field=e.json_field,
                    json_value=e.json_value,
                    verify_tls=pick(e.verify_tls, d.verify_tls),
                    ca_file=pick(e.ca_file, d.ca_file),
                    server_name=e.server_name,
                    cert_min_days=pick(e.cert_min_days, d.cert_min_days),
                    source_address=e.source_address,
                    family=fam[pick(e.family, 0)],
                    all_addresses=pick(e.all_addresses, d.all_addresses),
                    reuse_connection=pick(e.reuse_connection, d.reuse_connection),
                    headers=tuple((e.headers or {}).items()),
                    labels=tuple(sorted(e.labels.items())),
                )
            )
        return out

    @property
    def shard_index(self) -> tuple[int, int] | None:
        if self.shard is None:
            return None
        i, n = self.shard.split("/")
        return int(i), int(n)


def load_config(path: str | Path) -> FastpingConfig:
    """Read and validate a YAML configuration file. Raises ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text: {e}") from None
    return parse_config_text(text, source=str(p))


def parse_config_text(text: str, source: str = "<config>") -> FastpingConfig:
    """Validate YAML text (``source`` names it in errors)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: {len(text)} characters is too big for a config file (at most "
            f"{MAX_CONFIG_BYTES}); put long target lists in a file for --file"
        )
    _check_flow_depth(text, source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_shape(node, source)
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(
            f"{source}: nested too deep for a config file (at most {MAX_DEPTH} levels)"
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{source}{where}: bad YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: bad YAML: {e}") from None
    return parse_config(data, source=source, node=node)


def _too_deep(source: str, line: int) -> ConfigError:
    return ConfigError(
        f"{source}, line {line}: nested deeper than {MAX_DEPTH} levels: not a fastping config"
    )


def _check_flow_depth(text: str, source: str) -> None:
    """Refuse flow collections ([...], {...}) nested deeper than MAX_DEPTH before the
    YAML scanner sees them (it is quadratic in that depth)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for m in _FLOW.finditer(text):
        c = m.group()
        if c == "[" or c == "{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(source, text.count("\n", 0, m.start()) + 1)
        elif c == "]" or c == "}":
            depth = max(0, depth - 1)


def _check_shape(root: yaml.Node | None, source: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH and alias expansion beyond MAX_NODES, in
    time linear in the composed graph (a shared node's expanded size is computed once)."""
    if root is None:
        return
    size: dict[int, int] = {}
    # iterative post-order walk: (node, depth, children done?)
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        n, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(source, n.start_mark.line + 1 if n.start_mark else 0)
        if isinstance(n, yaml.MappingNode):
            kids = [x for kv in n.value for x in kv]
        elif isinstance(n, yaml.SequenceNode):
            kids = list(n.value)
        else:
            size[id(n)] = 1
            continue
        if done:
            total = 1 + sum(size.get(id(k), 1) for k in kids)
            if total > MAX_NODES:
                line = n.start_mark.line + 1 if n.start_mark else 0
                raise ConfigError(
                    f"{source}, line {line}: aliases expand to more than {MAX_NODES} values "
                    "(an alias bomb?): write the values out"
                )
            size[id(n)] = total
            continue
        if id(n) in size:
            continue
        stack.append((n, depth, True))
        stack.extend((k, depth + 1, False) for k in kids if id(k) not in size)


def parse_config(
    data: Any, source: str = "<config>", node: yaml.Node | None = None
) -> FastpingConfig:
    """Validate already-parsed data (a mapping; None means all defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys "
            f"({', '.join(FastpingConfig.model_fields)}), not a {type(data).__name__}"
        )
    try:
        cfg = FastpingConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            error_text(e, FastpingConfig, where=lambda loc: f" ({source}{_where(node, loc)})")
        ) from None
    # Checked here rather than in a model validator so the error can name the index.
    # the same host probed with another kind or on another port is another target
    seen: dict[str, int] = {}
    cfg = _expand_dns(cfg, source, node)
    for i, t in enumerate(cfg.targets):
        if t.label in seen:
            raise ConfigError(
                _line(
                    f"targets[{i}].host",
                    t.label,
                    f"duplicate of targets[{seen[t.label]}]",
                    source,
                    node,
                    ("targets", i),
                )  # fmt: skip
            )
        seen[t.label] = i
    return cfg


def _expand_dns(cfg: FastpingConfig, source: str, node: yaml.Node | None) -> FastpingConfig:
    """``targets`` with every (server, name, type) of the ``dns:`` matrices after them;
    a pair named twice (in targets or another matrix) is an error naming both."""
    if not cfg.dns:
        return cfg
    where = {t.label: f"targets[{i}]" for i, t in enumerate(cfg.targets)}
    extra = []
    for k, m in enumerate(cfg.dns):
        for tc in m.target_configs():
            if tc.label in where:
                raise ConfigError(
                    _line(
                        f"dns[{k}]",
                        tc.label,
                        f"asked already by {where[tc.label]}",
                        source,
                        node,
                        ("dns", k),
                    )  # fmt: skip
                )
            where[tc.label] = f"dns[{k}]"
            extra.append(tc)
    return cfg.model_copy(update={"targets": [*cfg.targets, *extra]})


def _line(
    path: str, value: Any, reason: str, source: str, node: yaml.Node | None,
    loc: Sequence[int | str],
) -> str:  # fmt: skip
    return f"{path}: {show(value)} is not allowed: {reason} ({source}{_where(node, loc)})"


def _where(node: yaml.Node | None, loc: Sequence[int | str]) -> str:
    """', line N' of the deepest node of ``loc`` that exists in the YAML tree."""
    best: yaml.Node | None = node
    cur = node
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(cur, yaml.MappingNode):
            for k, v in cur.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt = v
                    break
        elif (
            isinstance(cur, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(cur.value)
        ):
            nxt = cur.value[part]
        if nxt is None:
            break
        best = cur = nxt
    if best is None:
        return ""
    return f", line {best.start_mark.line + 1}"


__all__ = [
    "Defaults",
    "DnsMatrix",
    "FastpingConfig",
    "HttpCheckConfig",
    "HttpConfig",
    "HttpDefaults",
    "LoggingConfig",
    "MetricsConfig",
    "ResourcesConfig",
    "StoreConfig",
    "TargetConfig",
    "load_config",
    "parse_config",
    "parse_config_text",
]
