"""Command-line pieces both command lines share (`python -m trainables.run`, run_grid.py): a flag per
policy option, generated from the policies' option dataclasses, and the old `KEY=VALUE` spellings.

Every flag comes from a typed setting (trainables/settings.py): its help, its allowed values, its
parsing and its check are the setting's. Pure Python.
"""

from __future__ import annotations

import argparse
import difflib
import json
from typing import Any

from trainables.policies import option_fields, policy_options
from trainables.settings import add_flag, fail, flag_of, parse_given


def add_policy_arguments(parser: argparse.ArgumentParser, group: str, dest_prefix: str) -> None:
    """One flag per policy option (every policy's, trainables/policies/options.py), its help saying
    which methods take it."""
    target = parser.add_argument_group(group)
    for name, (field, methods) in option_fields().items():
        defaults = {policy_options(m)[name] for m in methods if policy_options(m)[name] is not None}
        shown = f" (default: {next(iter(defaults))})" if len(defaults) == 1 else ""
        add_flag(
            target, field, dest_prefix + name, help=f"{field.metadata['help']}{shown}; options of {', '.join(methods)}"
        )


def policy_flag(name: str) -> str:
    """The command-line flag of the policy option `name` (`--<name>` for a name no policy has)."""
    fields = option_fields()
    return flag_of(fields[name][0]) if name in fields else f"--{name.replace('_', '-')}"


def given_policy_options(args: argparse.Namespace, dest_prefix: str) -> dict[str, Any]:
    """The policy options given as flags, parsed and checked."""
    out = {}
    for name, (field, _) in option_fields().items():
        text = getattr(args, dest_prefix + name, None)
        if text is not None:
            out[name] = parse_given(field, text)
    return out


def known_keys(name: str, given: dict[str, Any], known: Any) -> dict[str, Any]:
    """`given` (from `KEY=VALUE` items of the flag `name`) when every key is in `known`; else ValueError
    naming the unknown key, the closest known one and all of them."""
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            fail(name, key, f"a known key ({hint}known: {', '.join(sorted(known))})")
    return given


def check_subset_seed(given: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse a subset_seed the user gave when no subset is drawn (no train_limit or test_limit in the
    trial settings `settings`): it would change nothing."""
    if "subset_seed" in given and settings.get("train_limit") is None and settings.get("test_limit") is None:
        fail(
            "subset_seed",
            given["subset_seed"],
            "a --train-limit or --test-limit with it: without one no subset is drawn, so it would change nothing",
        )


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def pairs(name: str, items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` items as a mapping (values read as JSON when they parse: 3, 0.5, true, null)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(name, item, "KEY=VALUE")
        out[key] = _value(value)
    return out
