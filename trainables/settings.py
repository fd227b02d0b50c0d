"""Typed settings: a dataclass field carries its help text, its allowed values and its role.

    @dataclass(frozen=True)
    class Options:
        cooldown: int = setting(10, "epochs to hold after a change", kind="int", minimum=0)

        def __post_init__(self) -> None:
            validate(self)

One place checks every setting and words every refusal the same way:
`<field>=<value> is not allowed; expected <what>`. The command lines are generated from the same
fields (`add_arguments`, `parse_text`), so a new field shows up there with its help. Pure Python.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn

MISSING = dataclasses.MISSING
KINDS = ("int", "float", "bool", "choice", "str", "path", "mapping")


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    kind: str,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    below: float | None = None,
    nullable: bool = False,
    execution: bool = False,
    flag: str | None = None,
    const: str | None = None,
    neutral: Any = MISSING,
) -> Any:
    """A dataclass field with its metadata.

    kind: int | float | bool | choice (one of `choices`, compared with their types) | str (non-empty)
    | path (a string; None when nullable) | mapping (a dict, checked by its owner). minimum/maximum
    bound numbers (`strict`: minimum excluded; `below`: an exclusive upper bound); nullable allows
    None. execution: the setting changes how a trial runs, not what it computes (left out of the
    trial's identity). flag: the command-line flag when it is not --<name with dashes>; const: the
    text a bare flag stands for (`--compile` alone = `--compile true`). neutral: the value that
    reproduces the behaviour from before the setting existed; every setting added after config schema 1
    declares one (trainables/config_schema.py: stored configs that lack the setting read as this
    value, and a trial holding it keeps the id it had before the setting existed).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; expected one of {', '.join(KINDS)}")
    meta = {
        "help": help,
        "kind": kind,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "strict": strict,
        "below": below,
        "nullable": nullable,
        "execution": execution,
        "flag": flag,
        "const": const,
        "neutral": neutral,
    }
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fail(name: str, value: Any, expected: str) -> NoReturn:
    """Raise the one refusal wording."""
    raise ValueError(f"{name}={value!r} is not allowed; expected {expected}")


def _number_text(meta: Mapping[str, Any], integer: bool) -> str:
    parts = ["an integer" if integer else "a finite number"]
    if meta["minimum"] is not None:
        parts.append(f"{'>' if meta['strict'] else '>='} {meta['minimum']:g}")
    if meta["maximum"] is not None:
        parts.append(f"<= {meta['maximum']:g}")
    if meta["below"] is not None:
        parts.append(f"< {meta['below']:g}")
    text = parts[0] + (" " + " and ".join(parts[1:]) if len(parts) > 1 else "")
    return text + (" or null" if meta["nullable"] else "")


def expected(meta: Mapping[str, Any]) -> str:
    """What a setting accepts, in words."""
    kind = meta["kind"]
    if kind in ("int", "float"):
        return _number_text(meta, kind == "int")
    if kind == "bool":
        return "true or false"
    if kind == "choice":
        return "one of " + ", ".join(map(repr, meta["choices"])) + (" or null" if meta["nullable"] else "")
    if kind == "mapping":
        return "a mapping of options"
    return "a non-empty string" + (" or null" if meta["nullable"] else "")


def check(name: str, value: Any, meta: Mapping[str, Any]) -> Any:
    """The value, normalised (an int given for a float becomes a float); ValueError when not allowed."""
    if value is None and meta["nullable"]:
        return None
    kind = meta["kind"]
    if kind in ("int", "float"):
        ok = (
            (isinstance(value, int) if kind == "int" else isinstance(value, (int, float)))
            and not isinstance(value, bool)
            and math.isfinite(value)
        )
        if ok:
            low, high, below = meta["minimum"], meta["maximum"], meta["below"]
            ok = (
                (low is None or (value > low if meta["strict"] else value >= low))
                and (high is None or value <= high)
                and (below is None or value < below)
            )
        if not ok:
            fail(name, value, expected(meta))
        return float(value) if kind == "float" else value
    if kind == "bool":
        if not isinstance(value, bool):
            fail(name, value, expected(meta))
        return value
    if kind == "choice":
        # `1 in (True,)` is true in Python: compare types too.
        if not any(value == c and type(value) is type(c) for c in meta["choices"]):
            fail(name, value, expected(meta))
        return value
    if kind == "mapping":
        if not isinstance(value, Mapping):
            fail(name, value, expected(meta))
        return dict(value)
    if not isinstance(value, str) or (kind == "str" and not value):
        fail(name, value, expected(meta))
    return value


def fields_of(cls: Any) -> list[dataclasses.Field]:
    """The dataclass fields that carry setting metadata."""
    return [f for f in dataclasses.fields(cls) if "kind" in f.metadata]


def validate(instance: Any, prefix: str = "") -> None:
    """Check (and normalise, also on frozen dataclasses) every setting of `instance`."""
    for f in fields_of(instance):
        value = check(prefix + f.name, getattr(instance, f.name), f.metadata)
        object.__setattr__(instance, f.name, value)


def defaults(cls: Any) -> dict[str, Any]:
    """name -> default of every setting that has one."""
    out = {}
    for f in fields_of(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def required(cls: Any) -> list[str]:
    """Names of the settings without a default."""
    return [f.name for f in fields_of(cls) if f.default is MISSING and f.default_factory is MISSING]


def build(cls: Any, data: Mapping[str, Any], what: str) -> Any:
    """`cls(**data)` with unknown and missing fields refused (`what` names one: "config field")."""
    if not isinstance(data, Mapping):
        fail(what, data, "a mapping of settings")
    names = {f.name for f in fields_of(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what}(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(names))}")
    missing = [n for n in required(cls) if n not in data]
    if missing:
        raise ValueError(f"missing required {what}(s) {', '.join(map(repr, missing))}")
    return cls(**data)


# --------------------------------------------------------------------------------------------- command lines

_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}


def parse_text(name: str, text: str, meta: Mapping[str, Any]) -> Any:
    """A setting's value from command-line text (then `check`ed by the owner)."""
    if meta["nullable"] and text.lower() in ("null", "none"):
        return None
    kind = meta["kind"]
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        fail(name, text, expected(meta))
    if kind == "bool":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        fail(name, text, expected(meta))
    if kind == "choice":
        for c in meta["choices"]:
            if text == str(c) or (isinstance(c, bool) and text.lower() in (_TRUE if c else _FALSE)):
                return c
        fail(name, text, expected(meta))
    if kind == "mapping":
        return json.loads(text)
    return text


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a setting."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def add_arguments(
    parser: Any, cls: Any, skip: set[str] = frozenset(), group: str | None = None, dest_prefix: str = ""
) -> dict[str, str]:
    """Add `--<field>` for each setting of `cls` (not in `skip`) to an argparse parser, the field's
    help as help and its allowed values as metavar; values stay text (None when not given) for
    `parse_text`. Returns dest -> field name."""
    target = parser.add_argument_group(group) if group else parser
    dests = {}
    for f in fields_of(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        metavar = (
            ("{" + ",".join(str(c) for c in meta["choices"]) + "}")
            if meta["kind"] == "choice"
            else meta["kind"].upper()
        )
        dest = dest_prefix + f.name
        default = defaults(cls).get(f.name, MISSING)
        shown = "" if default is MISSING or default is None else f" (default: {default})"
        optional = {"nargs": "?", "const": meta["const"]} if meta["const"] is not None else {}
        target.add_argument(
            flag_of(f), dest=dest, default=None, metavar=metavar, help=(meta["help"] or f.name) + shown, **optional
        )
        dests[dest] = f.name
    return dests
