"""Prometheus remote write from a running monitor: for agents nothing can scrape
(behind NAT, short-lived), the scrape endpoint's series pushed to any receiver
(Prometheus with ``--web.enable-remote-write-receiver``, VictoriaMetrics, Mimir,
Thanos Receive, Cortex, Grafana Cloud...).

    writer = RemoteWriter(collector, "http://127.0.0.1:8428/api/v1/write",
                          labels={"job": "fastping", "instance": "site-a"})
    writer.start()     # a push every interval_s, in a thread of its own
    ...
    writer.close()     # one last push, so the counters end where the run did

The protocol is remote write 1.0: a ``prometheus.WriteRequest`` protobuf, snappy
block-compressed, POSTed with ``Content-Encoding: snappy``, ``Content-Type:
application/x-protobuf`` and ``X-Prometheus-Remote-Write-Version: 0.1.0``. The four
messages it needs (WriteRequest, TimeSeries, Label, Sample) are encoded here by
hand (a few dozen lines, no protobuf runtime); snappy is ``cramjam``'s.

The series are the scrape's: the samples come from the same
``MetricsCollector.collect()`` the scrape renders (names, label names and values
alike: ``smokeping_requests_total``, ``smokeping_response_duration_seconds_bucket``,
``fastping_results_total{outcome=...}``...), plus the labels a scrape would have
had added by Prometheus (``job``, ``instance``; given by the caller). Every sample
of one push has that push's time. Counters are cumulative, so a push that fails is
not queued: the next one carries the same counters, newer. Failures are counted and
logged (the first at once, then one line a minute while they last); a 4xx answer
other than 429 (the receiver refuses this data) is logged at ERROR.
"""

from __future__ import annotations

import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import ConfigError
from .logs import get_logger

log = get_logger("fastping.remote_write")

_DOUBLE = struct.Struct("<d")

Series = tuple[Sequence[tuple[str, str]], Sequence[tuple[float, int]]]


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int64 as protobuf encodes it: two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_label(name: str, value: str) -> bytes:
    return _field(1, name.encode()) + _field(2, value.encode())


def encode_sample(value: float, timestamp_ms: int) -> bytes:
    # field 1: double (wire type 1, fixed 64), field 2: int64 (varint)
    return b"\x09" + _DOUBLE.pack(value) + b"\x10" + _varint(int(timestamp_ms))


def encode_write_request(series: Iterable[Series]) -> bytes:
    """A ``prometheus.WriteRequest`` of ``series``: (labels, samples), labels sorted
    by name as the protocol asks (``__name__`` among them)."""
    out = []
    for labels, samples in series:
        ts = b"".join(_field(1, encode_label(n, v)) for n, v in sorted(labels))
        ts += b"".join(_field(2, encode_sample(v, t)) for v, t in samples)
        out.append(_field(1, ts))
    return b"".join(out)


def decode_write_request(data: bytes) -> list[tuple[dict[str, str], list[tuple[float, int]]]]:
    """The inverse of ``encode_write_request`` (for tests and debugging)."""

    def fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
        i = 0
        while i < len(buf):
            key, i = _read_varint(buf, i)
            num, wt = key >> 3, key & 7
            if wt == 2:
                n, i = _read_varint(buf, i)
                yield num, wt, buf[i : i + n]
                i += n
            elif wt == 1:
                yield num, wt, buf[i : i + 8]
                i += 8
            elif wt == 0:
                v, i = _read_varint(buf, i)
                yield num, wt, v
            else:
                raise ValueError(f"wire type {wt} not used by remote write")

    out = []
    for num, _, ts in fields(data):
        if num != 1:
            continue
        labels: dict[str, str] = {}
        samples: list[tuple[float, int]] = []
        for f, _, v in fields(ts):
            if f == 1:
                kv = {k: bytes(x).decode() for k, _, x in fields(v)}
                labels[kv.get(1, "")] = kv.get(2, "")
            elif f == 2:
                value, tstamp = 0.0, 0
                for k, _, x in fields(v):
                    if k == 1:
                        value = _DOUBLE.unpack(x)[0]
                    elif k == 2:
                        tstamp = x - (1 << 64) if x >= 1 << 63 else x
                samples.append((value, tstamp))
        out.append((labels, samples))
    return out


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def snappy_compress(data: bytes) -> bytes:
    try:
        import cramjam
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ConfigError("remote write needs cramjam (snappy): pip install cramjam") from None
    return bytes(cramjam.snappy.compress_raw(data))


def snappy_decompress(data: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.decompress_raw(data))


def samples_of(
    metrics: Iterable[Any], extra: Mapping[str, str]
) -> list[tuple[dict[str, str], float]]:
    """(labels with ``__name__``, value) of every sample of prometheus_client metric
    families (what a scrape of the same families shows), ``extra`` labels added
    (a sample's own label of the same name wins, as Prometheus' honor_labels). A label
    with an empty value is left out: in Prometheus' data model it is no label (a
    scrape's ``source=""`` is stored without ``source``), and receivers refuse or drop
    empty values."""
    out = []
    for m in metrics:
        for s in m.samples:
            labels = {k: v for k, v in {**extra, **s.labels}.items() if v != ""}
            labels["__name__"] = s.name
            out.append((labels, float(s.value)))
    return out


class RemoteWriter:
    """Pushes ``collector``'s samples to ``url`` every ``interval_s`` (see the module
    docstring). ``collector``: anything with ``collect()`` yielding prometheus_client
    metric families (``metrics.MetricsCollector``)."""

    def __init__(
        self,
        collector: Any,
        url: str,
        *,
        interval_s: float = 15.0,
        timeout_s: float = 10.0,
        labels: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"remote write URL {url!r}: give an http:// or https:// URL")
        if not (interval_s > 0 and timeout_s > 0):
            raise ConfigError("remote write interval_s and timeout_s must be > 0")
        self.collector = collector
        self.url = url
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.labels = dict(labels or {})
        self.headers = dict(headers or {})
        self.pushes = 0
        self.failures = 0
        self.samples = 0  # samples accepted by the receiver, over every push
        self.bytes = 0
        self.last_error: str | None = None
        self._last_log = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one push at a time (the thread's and close()'s)
        self._thread: threading.Thread | None = None

    def body(self, now_ms: int | None = None) -> tuple[bytes, int]:
        """(the compressed WriteRequest of the samples now, samples in it)."""
        t = int(time.time() * 1000) if now_ms is None else now_ms
        samples = samples_of(self.collector.collect(), self.labels)
        series = [(list(labels.items()), [(v, t)]) for labels, v in samples]
        return snappy_compress(encode_write_request(series)), len(series)

    def push(self) -> bool:
        """One push now; True when the receiver took it."""
        with self._lock:
            try:
                data, n = self.body()
            except Exception as e:  # noqa: BLE001 - a collector error must not kill the thread
                return self._failed(f"collect failed: {e!r}", error=True)
            req = urllib.request.Request(
                self.url,
                data=data,
                method="POST",
                headers={
                    "Content-Encoding": "snappy",
                    "Content-Type": "application/x-protobuf",
                    "X-Prometheus-Remote-Write-Version": "0.1.0",
                    "User-Agent": "fastping-remote-write",
                    **self.headers,
                },
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    r.read()
            except urllib.error.HTTPError as e:
                body = e.read()[:200].decode(errors="replace").strip()
                refused = 400 <= e.code < 500 and e.code != 429
                return self._failed(f"HTTP {e.code}: {body}", error=refused)
            except (OSError, ValueError) as e:
                return self._failed(f"{type(e).__name__}: {e}")
            if self.failures and self.last_error is not None:
                log.info("remote write recovered", url=self.url, failures=self.failures)
                self.last_error = None
            self.pushes += 1
            self.samples += n
            self.bytes += len(data)
            return True

    def _failed(self, why: str, error: bool = False) -> bool:
        self.failures += 1
        self.last_error = why
        now = time.monotonic()
        if error or self._last_log == 0.0 or now - self._last_log >= 60.0:
            self._last_log = now
            (log.error if error else log.warning)(
                "remote write failed; the next push carries the same counters",
                url=self.url, error=why, failures=self.failures,
            )  # fmt: skip
        return False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fastping-remote-write",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push()

    def close(self, final_push: bool = True) -> None:
        """Stop the thread and (by default) push once more: the counters as they end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 5)
            self._thread = None
        if final_push:
            self.push()

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pushes": self.pushes,
            "failures": self.failures,
            "samples": self.samples,
            "bytes": self.bytes,
            "last_error": self.last_error,
        }
