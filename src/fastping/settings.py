"""What every configuration model shares: the pydantic base, the one ``Seconds``
type, and the text of a validation error.

A problem is one line naming the key path, the bad value and what is allowed::

    retry.max_attempts: 0 is not allowed: must be >= 1
    network.check_hosts[0]: '' is not allowed: must be a host name or address

``fastping.config`` adds where in the file it is (``(fastping.yaml, line 9)``).
``Section`` is the base of the models that library code builds directly too
(``NetworkConfig``, ``RetryConfig``): a bad value raises ``ConfigError`` in the same
words whether it came from the file, ``from_mapping`` or the constructor.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from .duration import parse_duration
from .errors import ConfigError

__all__ = ["Model", "Seconds", "Section", "WholeNumber", "error_text", "parse_listen", "show"]

DURATION_SYNTAX = "a number of seconds or a duration like 500ms, 1s, 2m"


def _duration(v: Any) -> Any:
    if isinstance(v, bool):
        # bool is an int to Python; `true` seconds is a typo, not 1 s
        raise ValueError(f"must be {DURATION_SYNTAX}, not true or false")
    if isinstance(v, float) and math.isnan(v):
        # infinities go on to the field's bounds ("must be <= 3600") or allow_inf_nan
        raise ValueError(f"must be {DURATION_SYNTAX}, not NaN")
    if not isinstance(v, str):
        return v  # numbers (and wrong types) go to pydantic's own checks and messages
    try:
        return parse_duration(v)
    except ValueError:
        raise ValueError(f"must be {DURATION_SYNTAX}") from None


def _whole(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("must be a whole number, not true or false")
    return v


# seconds: a number or "500ms" / "1s" / "2m" / "1m30s" (fastping.duration), in every section
Seconds = Annotated[float, BeforeValidator(_duration)]
# an int that `true` is not (pydantic's lax int takes booleans as 0 and 1)
WholeNumber = Annotated[int, BeforeValidator(_whole)]


class Model(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting
    model_config = ConfigDict(extra="forbid", frozen=True)


class Section(Model):
    """A config file section that code builds directly too, with named profiles.

    Input may name a profile (``profile: patient``, or just the string ``patient``)
    and set keys, which override the profile's values. The ``profile`` field itself
    stays None on a built model: it exists so a bad name is reported at
    ``SECTION.profile`` with the names allowed."""

    SECTION: ClassVar[str]

    # input key `profile`; a known name is consumed by _apply_profile, so a value
    # here is always a bad name (the model's own attribute `profile` is a classmethod)
    profile_name: Any = Field(default=None, alias="profile", exclude=True, repr=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(error_text(e, type(self), prefix=(self.SECTION,))) from None

    # Marked as pydantic's own __init__ (as pydantic's RootModel does): otherwise
    # pydantic calls this override while validating the model inside another (the
    # file's FastpingConfig) and reports its ConfigError as one opaque value error.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def profile_values(cls) -> Mapping[str, Mapping[str, Any]]:
        """The named profiles' settings."""
        return {}

    @field_validator("profile_name")
    @classmethod
    def _known_profile(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError(f"must be one of {', '.join(cls.profile_values())}")
        return v

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | str | None) -> Self:
        """Build from the YAML section (a mapping, a profile name or None for the
        defaults); ConfigError names each bad key, its value and what is allowed."""
        if data is None:
            return cls()
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(error_text(e, cls, prefix=(cls.SECTION,))) from None

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if isinstance(data, BaseModel):
            return data  # built already (a default, or passed in by code)
        profiles = cls.profile_values()
        if isinstance(data, str):
            data = {"profile": data}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"must be a mapping of {cls.SECTION} keys or a profile name ({', '.join(profiles)})"
            )
        name = data.get("profile")
        key = name.strip().lower() if isinstance(name, str) else name
        if key not in profiles:
            return data  # no profile, or a bad name: the profile field reports it
        rest = {k: v for k, v in data.items() if k != "profile"}
        return {**profiles[str(key)], **rest}


# --- the text of a ValidationError ----------------------------------------------------


def error_text(
    e: ValidationError,
    model: type[BaseModel],
    *,
    prefix: Sequence[int | str] = (),
    where: Callable[[Sequence[int | str]], str] = lambda loc: "",
) -> str:
    """One line per problem of ``e`` (raised validating ``model``): the key path
    (``prefix`` first), the value, what is allowed, then ``where(path)`` (a location
    such as `` (fastping.yaml, line 3)``). The branches of a union that all failed at
    one path share a line (``must be a mapping or a string``)."""
    heads: dict[str, tuple[str, list[str], str]] = {}
    for err in e.errors():
        # pydantic names the branch of a union it tried ("retry.dict[str,any]") and the
        # function of a validator; keep only the user's keys and indexes.
        own = [p for p in err["loc"] if isinstance(p, int) or not _is_internal(p)]
        loc = [*prefix, *own]
        path = _keypath(loc) or "(top level)"
        reason = _allowed(err)
        if err["type"] == "extra_forbidden":
            keys = _allowed_keys(model, own[:-1])
            if keys:
                reason = f"unknown key; allowed keys here: {', '.join(keys)}"
            head = f"{path}: "
        elif err["type"] == "missing":
            head = f"{path}: missing: "
        else:
            head = f"{path}: {show(err.get('input'))} is not allowed: "
        if path in heads and err["type"] != "missing":
            heads[path][1].append(reason.removeprefix("must be "))
        else:
            heads.setdefault(path, (head, [reason], where(loc)))
    return "\n".join(h + " or ".join(rs) + w for h, rs, w in heads.values())


def _keypath(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 4, 4, 40, 40


def show(value: Any) -> str:
    """A value as the YAML user wrote it (null, true), bounded in length."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (Mapping, list)):
        # bounded: repr() of an alias-expanded value would walk all of it
        text = _REPR.repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


# pydantic error types -> what is allowed, in words
_PLAIN = {
    "extra_forbidden": "unknown key",
    "missing": "required",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
}
_BOUND = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _allowed(err: Mapping[str, Any]) -> str:
    t = err["type"]
    ctx = {k: _num(v) for k, v in (err.get("ctx") or {}).items()}
    if t in _BOUND:
        key, op = _BOUND[t]
        return f"must be {op} {ctx[key]}"
    if t == "literal_error":
        return f"must be one of {ctx['expected']}"
    if t == "value_error":
        return str(ctx.get("error", err["msg"]))
    return _PLAIN.get(t, str(err["msg"]))


def _num(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _is_internal(part: str) -> bool:
    return "[" in part or part.startswith("function-") or part in ("str", "dict", "list")


def _allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        sub = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return [f.alias or name for name, f in model.model_fields.items()]


def parse_listen(text: str, what: str = "--metrics") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (= 127.0.0.1:PORT) -> (host, port).

    An empty host is refused rather than read as "all interfaces": exposing the
    endpoint everywhere must be asked for by name (``0.0.0.0:9374``, ``[::]:9374``).
    Port 0 takes a free port (tests).
    """
    s = str(text).strip()
    if s.isdigit():
        host, port_s = "127.0.0.1", s
    else:
        host, sep, port_s = s.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            host = ""  # a bare IPv6 address: ambiguous without brackets
        if not sep or not host or not port_s.isdigit():
            hint = (
                " (Put --metrics after the targets, or give its address, so a target is not "
                "read as the address.)"
                if what == "--metrics"
                else ""
            )
            raise ConfigError(
                f"{what} {text!r}: give HOST:PORT (e.g. 127.0.0.1:9374, [::1]:9374) or a "
                "port alone for 127.0.0.1; to listen on every interface say so: "
                f"0.0.0.0:9374.{hint}"
            )
    port = int(port_s)
    if not 0 <= port < 65536:
        raise ConfigError(f"{what} {text!r}: give HOST:PORT with a port 1..65535")
    return host, port
