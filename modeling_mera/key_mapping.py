"""Renaming released checkpoints' weights into mera-mcl's module names (BEATs, Point-BERT, BERT for the Q-Former)."""

import re


def rename_key(key: str, names: list[tuple[str, str]]) -> str | None:
    """
    `key` renamed by the first `(source, target)` pair that matches it, or None when none does. A source ending in
    "." renames a prefix, any other source a whole key; "{i}" in a source matches a layer index, which the target's
    "{i}" repeats (a target without "{i}" maps every layer's key to one name).
    """
    for source, target in names:
        pattern = re.escape(source).replace(re.escape("{i}"), r"(\d+)") + ("" if source.endswith(".") else "$")
        match = re.match(pattern, key)
        if match:
            return target.replace("{i}", match.group(1) if match.groups() else "") + key[match.end() :]
    return None
