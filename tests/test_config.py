"""The YAML configuration: defaults, the example file, and errors that say what is wrong."""

# ruff: noqa: E501  (the table of expected messages reads best one case a line)

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastping.config import FastpingConfig, load_config, parse_config, parse_config_text
from fastping.errors import ConfigError
from fastping.retry import RetryConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastping.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "fastping.yaml"
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    return str(e.value)


def test_example_file_loads_and_is_loopback_only() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.mode == "auto"
    hosts = [t.host for t in cfg.targets]
    assert hosts and all(h.startswith("127.") or h == "::1" for h in hosts)
    lab = next(t for t in cfg.targets if t.labels)
    assert lab.labels["site"] == "lab"
    assert cfg.target_settings(lab) == (0.5, 1.0, 56)
    assert cfg.store.retention_s == 604800 and cfg.store.batch_size == 1000
    assert cfg.logging.max_bytes == 10_000_000 and cfg.logging.backup_count == 5
    assert cfg.resources.max_cpu_percent == 50 and cfg.resources.max_memory_mb == 100


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "# nothing yet\n"))
    assert cfg == FastpingConfig()
    assert cfg.defaults.interval_s == 1.0 and cfg.defaults.payload_size == 56
    assert cfg.store.path == "fastping.db" and cfg.metrics.listen is None and cfg.shard is None


def test_targets_as_strings_or_mappings(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            "defaults: {interval_s: 2}\n"
            "targets:\n  - 127.0.0.1\n  - {host: 127.0.0.2, interval_s: 0.5, labels: {site: lab}}\n"
            "  - 127.0.1.0/30\nretry: balanced\nshard: 1/4\nlogging: {level: debug}\n",
        )
    )
    assert [t.host for t in cfg.targets] == ["127.0.0.1", "127.0.0.2", "127.0.1.0/30"]
    assert cfg.target_settings(cfg.targets[0])[0] == 2.0
    assert cfg.target_settings(cfg.targets[1])[0] == 0.5
    assert (
        cfg.retry == RetryConfig.profile("balanced")
        and cfg.shard_index == (1, 4)
        and cfg.logging.level == "DEBUG"
    )


def test_error_names_key_path_value_allowed_and_line(tmp_path: Path) -> None:
    msg = error_of(
        tmp_path,
        "targets:\n  - 127.0.0.1\n  - 127.0.0.2\n  - {host: 127.0.0.3, interval_s: -1}\n",
    )
    assert msg == "targets[2].interval_s: -1 is not allowed: must be >= 0.001 (%s, line 4)" % (
        tmp_path / "fastping.yaml"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mode: fast\n", "mode: 'fast' is not allowed: must be one of 'auto', 'raw', 'dgram', 'subprocess' or 'connect'"),
        ("defaults: {timeout_s: 0}\n", "defaults.timeout_s: 0 is not allowed: must be > 0"),
        ("defaults: {payload_size: 70000}\n", "defaults.payload_size: 70000 is not allowed: must be <= 65000"),
        ("targets: [999.1.1.1.1]\n", "targets[0].host: '999.1.1.1.1' is not allowed: target '999.1.1.1.1' is not"),
        ("targets: [127.0.0.1, -x]\n", "targets[1].host: '-x' is not allowed: target '-x' starts with '-'"),
        ("targets: [{hots: 127.0.0.1}]\n", "targets[0].host: missing: required"),
        ("targets: [{host: 127.0.0.1, colour: red}]\n", "targets[0].colour: unknown key; allowed keys here: host, interval_s"),
        ("targets: [127.0.0.1, 127.0.0.1]\n", "targets[1].host: '127.0.0.1' is not allowed: duplicate of targets[0]"),
        ("targets: 127.0.0.1\n", "targets: '127.0.0.1' is not allowed: must be a list"),
        ("stor: {}\n", "stor: unknown key; allowed keys here: mode, defaults, targets, store"),
        ("store: {batch_size: many}\n", "store.batch_size: 'many' is not allowed: must be a whole number"),
        ("store: {retention_s: -5}\n", "store.retention_s: -5 is not allowed: must be > 0"),
        ("resources: {max_cpu_percent: 0}\n", "resources.max_cpu_percent: 0 is not allowed: must be > 0"),
        ("logging: {level: loud}\n", "logging.level: 'LOUD' is not allowed: must be one of 'DEBUG'"),
        ("logging: {format: xml}\n", "logging.format: 'xml' is not allowed: must be one of 'console' or 'json'"),
        ("logging: {console: maybe}\n", "logging.console: 'maybe' is not allowed: must be true or false"),
        ("metrics: {listen: 9108}\n", "metrics.listen: 9108 is not allowed: must be a string"),
        ("metrics: {listen: 'localhost'}\n", "metrics.listen: 'localhost' is not allowed: give HOST:PORT"),
        ("shard: 4/4\n", "shard: '4/4' is not allowed: needs 0 <= I < N"),
        ("shard: half\n", "shard: 'half' is not allowed: use \"I/N\""),
        ("retry: 3\n", "retry: 3 is not allowed: must be a mapping of retry keys or a profile name (conservative, balanced, patient)"),
        ("network: [a]\n", "network: ['a'] is not allowed: must be a mapping of network keys or a profile name"),
        ("network: {check_interval: soon}\n", "network.check_interval: 'soon' is not allowed: must be a number of seconds or a duration like 500ms, 1s, 2m"),
        ("network: {check_timeout: true}\n", "network.check_timeout: true is not allowed: must be a number of seconds or a duration like 500ms, 1s, 2m, not true or false"),
        ("network: {check_hosts: 5}\n", "network.check_hosts: 5 is not allowed: must be a list"),
        ("network: {webhook_retries: -1}\n", "network.webhook_retries: -1 is not allowed: must be >= 0"),
        ("network: {check_intreval: 5}\n", "network.check_intreval: unknown key; allowed keys here: profile, check_interval, check_timeout"),
        ("network: {profile: eager}\n", "network.profile: 'eager' is not allowed: must be one of conservative, balanced, patient"),
        ("network: {notify_on_change: 'ftp://x'}\n", "network.notify_on_change: 'ftp://x' is not allowed: scheme 'ftp' is not http or https: give an http:// or https:// webhook URL"),
        ("retry: {max_attempts: many}\n", "retry.max_attempts: 'many' is not allowed: must be a whole number"),
        ("retry: {max_attempts: true}\n", "retry.max_attempts: true is not allowed: must be a whole number, not true or false"),
        ("retry: {max_attempts: 0}\n", "retry.max_attempts: 0 is not allowed: must be >= 1"),
        ("retry: {multiplier: 0.5}\n", "retry.multiplier: 0.5 is not allowed: must be a finite number >= 1.0 (1.0 keeps the delay constant)"),
        ("retry: {initial_delay: 2, max_delay: 1}\n", "retry.max_delay: 1 is not allowed: must be >= initial_delay (2 s)"),
        ("retry: {network_timeout: 0}\n", "retry.network_timeout: 0 is not allowed: must be seconds > 0 (a number or a duration like 30s, 2m), or null to wait without limit"),
        ("retry: {max_attempt: 3}\n", "retry.max_attempt: unknown key; allowed keys here: profile, max_attempts, initial_delay"),
        ("retry: reckless\n", "retry.profile: 'reckless' is not allowed: must be one of conservative, balanced, patient"),
        ("defaults: {interval_s: true}\n", "defaults.interval_s: true is not allowed: must be a number of seconds or a duration like 500ms, 1s, 2m, not true or false"),
    ],
)  # fmt: skip
def test_invalid_values(tmp_path: Path, text: str, expected: str) -> None:
    msg = error_of(tmp_path, text)
    assert msg.startswith(expected), msg
    assert f"({tmp_path / 'fastping.yaml'}, line 1)" in msg


def test_every_problem_is_listed(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "mode: x\ndefaults:\n  interval_s: 0\nstore: {batch_size: 0}\n")
    lines = msg.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["mode", "defaults.interval_s", "store.batch_size"]
    assert lines[1].endswith("line 3)")


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "mode: auto\ntargets:\n  - 127.0.0.1\n  - [unclosed\nstore: {}\n")
    assert "bad YAML" in msg and "line 5" in msg


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "- 127.0.0.1\n")
    assert "top level must be a mapping" in msg and "not a list" in msg


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing.yaml.*No such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)  # a directory
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"mode: auto # caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)
    if os.geteuid() != 0:  # root reads anything; the mode bits stop only others
        q = write(tmp_path, "mode: auto\n")
        q.chmod(0)
        with pytest.raises(ConfigError, match="Permission denied"):
            load_config(q)


def test_parse_config_from_a_dict() -> None:
    cfg = parse_config({"targets": ["::1"], "store": {"path": "/tmp/x.db"}})
    assert cfg.targets[0].host == "::1" and cfg.store.path == "/tmp/x.db"
    with pytest.raises(
        ConfigError,
        match=r"defaults.interval_s: 'x' is not allowed: must be a number of seconds or a "
        r"duration like 500ms, 1s, 2m \(here",
    ):
        parse_config({"defaults": {"interval_s": "x"}}, source="here")


def test_parse_text_source_name() -> None:
    with pytest.raises(ConfigError, match=r"\(inline, line 1\)"):
        parse_config_text("mode: nope", source="inline")


def test_network_and_retry_sections_are_the_models_their_code_uses(tmp_path: Path) -> None:
    from fastping.netstate import NetworkConfig

    cfg = load_config(
        write(tmp_path, "network: {profile: patient, check_hosts: 127.0.0.1}\n"
              "retry: {profile: conservative, initial_delay: 500ms}\n")
    )  # fmt: skip
    assert cfg.network == NetworkConfig.profile("patient", check_hosts=("127.0.0.1",))
    assert cfg.network.check_interval == 30.0 and cfg.network.model_fields_set
    assert cfg.retry == RetryConfig.from_mapping({"profile": "conservative", "initial_delay": 0.5})
    assert not load_config(write(tmp_path, "mode: auto\n")).network.model_fields_set


def test_section_errors_name_the_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "mode: auto\nretry:\n  max_attempts: 0\nnetwork:\n  debounce: -1\n")
    src = tmp_path / "fastping.yaml"
    assert msg.splitlines() == [
        f"network.debounce: -1 is not allowed: must be > 0 ({src}, line 5)",
        f"retry.max_attempts: 0 is not allowed: must be >= 1 ({src}, line 3)",
    ]
