"""A broken wheel must never quietly become a slow one."""

import fastping


def test_extension_loaded() -> None:
    assert fastping.HAS_EXTENSION, "fastping._icmp did not import: the build is broken"
    from fastping import _icmp, _pipeline

    assert _icmp.__file__.endswith(".so")
    assert _pipeline.__file__.endswith(".so"), "the pipeline must be compiled, never a stand-in"


def test_public_api_names() -> None:
    for name in ("sweep", "ping", "async_sweep", "async_ping"):
        assert callable(getattr(fastping, name))
