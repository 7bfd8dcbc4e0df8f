"""``key: old -> new`` for the values two configs disagree on: how a guard says what changed.

Train's resume guard (the checkpoints' config against the new one) and prep's (the prepared
data's config against the new one, when checkpoints depend on them) print the same lines.
"""

from __future__ import annotations

from collections.abc import Callable


def flatten(node, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` of a nested dict (lists are values)."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def differences(
    old: dict, new: dict, prefix: str = "", skip: Callable[[str], bool] = lambda key: False
) -> list[str]:
    """``key: old -> new`` (``<unset>`` for a key one side lacks), keys sorted, ``skip``'s left
    out; ``prefix`` is put before every key (``data.`` for a data section)."""
    flat_old, flat_new = flatten(old, prefix), flatten(new, prefix)
    lines = []
    for key in sorted(set(flat_old) | set(flat_new)):
        if skip(key):
            continue
        a, b = flat_old.get(key, "<unset>"), flat_new.get(key, "<unset>")
        if a != b:
            lines.append(f"{key}: {a!r} -> {b!r}")
    return lines
