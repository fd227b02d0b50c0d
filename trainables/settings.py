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
KINDS = ("int", "float", "bool", "choice", "str", "path", "mapping", "list")


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
    items: str | None = None,
    cli: bool = True,
    switch: bool = False,
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
    value, and a trial holding it keeps the id it had before the setting existed). items: the kind of a
    list's items ("int", "str" or "choice"; numbers bounded by minimum/maximum, choices by `choices`);
    a list is a tuple of distinct items, given on a command line comma- or space-separated. cli: whether
    the command lines get a flag for it; switch: a bool flag that takes no value (`--dry-run`).
    """
    if (kind == "list") != (items is not None):
        raise ValueError("items= is required for kind='list' and allowed only there")
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
        "items": items,
        "cli": cli,
        "switch": switch,
    }
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fail(name: str, value: Any, expected: str) -> NoReturn:
    """Raise the one refusal wording."""
    raise ValueError(f"{name}={value!r} is not allowed; expected {expected}")


def _number_text(meta: Mapping[str, Any], integer: bool) -> str:
    def show(x: float) -> str:
        return str(int(x)) if integer or float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

    parts = ["an integer" if integer else "a finite number"]
    if meta["minimum"] is not None:
        parts.append(f"{'>' if meta['strict'] else '>='} {show(meta['minimum'])}")
    if meta["maximum"] is not None:
        parts.append(f"<= {show(meta['maximum'])}")
    if meta["below"] is not None:
        parts.append(f"< {show(meta['below'])}")
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
    if kind == "list":
        item = expected({**meta, "kind": meta["items"], "nullable": False})
        return f"a non-empty list of distinct items, each {item}"
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
    if kind == "list":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            fail(name, value, expected(meta))
        item_meta = {**meta, "kind": meta["items"], "nullable": False}
        out = tuple(check(name, v, item_meta) for v in value)
        if len(set(out)) != len(out):
            fail(name, value, expected(meta) + " (each value once)")
        return out
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
    if kind == "list":
        item_meta = {**meta, "kind": meta["items"], "nullable": False}
        words = [w for chunk in (text if isinstance(text, list) else [text]) for w in chunk.split(",") if w]
        return tuple(parse_text(name, w, item_meta) for w in words)
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
        if f.name in skip or not f.metadata["cli"]:
            continue
        dest = dest_prefix + f.name
        add_flag(target, f, dest, defaults(cls).get(f.name, MISSING))
        dests[dest] = f.name
    return dests


def metavar_of(meta: Mapping[str, Any]) -> str:
    """How a setting's value looks in --help."""
    kind = meta["items"] if meta["kind"] == "list" else meta["kind"]
    one = ("{" + ",".join(str(c) for c in meta["choices"]) + "}") if kind == "choice" else kind.upper()
    return one


def add_flag(target: Any, f: dataclasses.Field, dest: str, default: Any = MISSING, help: str | None = None) -> None:
    """Add the flag of one setting (see `add_arguments`)."""
    meta = f.metadata
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    shown = "" if default is MISSING or default is None or meta["switch"] else f" (default: {default})"
    text = (help or meta["help"] or f.name) + shown
    if meta["switch"]:
        target.add_argument(flag_of(f), dest=dest, action="store_const", const="true", default=None, help=text)
        return
    optional = {"nargs": "?", "const": meta["const"]} if meta["const"] is not None else {}
    if meta["kind"] == "list":
        optional = {"nargs": "+"}
    target.add_argument(flag_of(f), dest=dest, default=None, metavar=metavar_of(meta), help=text, **optional)


def given_values(args: Any, cls: Any, dest_prefix: str = "", skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """name -> value of the settings of `cls` given on a command line (`add_arguments`' flags), parsed
    from their text and checked (ValueError naming the flag's setting)."""
    out = {}
    for f in fields_of(cls):
        text = getattr(args, dest_prefix + f.name, None)
        if f.name not in skip and text is not None:
            out[f.name] = parse_given(f, text)
    return out


def parse_given(f: dataclasses.Field, text: Any) -> Any:
    """The checked value of setting `f` from its command-line text; a refusal names the flag the user
    typed (`study=''` for --study, `batch_size=0` for --batch-size)."""
    name = flag_of(f).lstrip("-").replace("-", "_")
    return check(name, parse_text(name, text, f.metadata), f.metadata)


def merge_old_spelling(
    given: dict[str, Any], old: Mapping[str, Any], old_text: str, new_flag: Any, warn: Any = None
) -> dict[str, Any]:
    """`given` (values of the current flags) plus values given with a deprecated spelling (`old`, whose
    items were written as `old_text.format(key=, value=)`), each with a one-line notice through `warn`
    (default: stderr). The same setting given both ways with different values is refused."""
    import sys

    out = dict(given)
    for key, value in old.items():
        spelled = old_text.format(key=key, value=json.dumps(value) if not isinstance(value, str) else value)
        flag = new_flag(key)
        (warn or (lambda line: print(line, file=sys.stderr, flush=True)))(
            f"note: {spelled} is deprecated; use {flag} {json.dumps(value) if not isinstance(value, str) else value}"
        )
        if key in out and out[key] != value:
            raise ValueError(
                f"{key} is given twice with different values ({flag} {out[key]!r} and {spelled}); give it once"
            )
        out[key] = value
    return out
