"""The linker flags of a build: the version stamp, and what only the run knows.

Go programs take their version, commit and build date through ``-ldflags -X``,
and the convention most of them follow is GoReleaser's (``main.version``,
``main.commit``, ``main.date``, filled from ``{{.Version}}``, ``{{.Commit}}``,
``{{.CommitDate}}``). The commit and its time are only known once the source
is loaded (a git URL's ref is resolved by the engine), so the ``ldflags``
parameter may name them with GoReleaser's placeholders, expanded at compile
time:

- ``{{.Version}}``: the version stamped into ``version_variable``;
- ``{{.Commit}}``, ``{{.ShortCommit}}`` (7 characters): the source's commit,
  ``unknown`` for a directory that is not a git checkout;
- ``{{.CommitDate}}`` (RFC 3339) and ``{{.CommitTimestamp}}`` (Unix seconds): the
  source's time, as in the image's ``created`` label (the commit time of a local
  checkout, the newest file's time of a plain directory, the Unix epoch for a
  git URL, whose time the engine's git API does not give).

There is no ``{{.Date}}``: the clock would make every build's binary differ, and
an unchanged source would never be served from cache. The value is split on
spaces by ``go build``, not by a shell, so quotes and substitutions, which would
not work as they read, are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tasks.imageref import show

__all__ = ["PLACEHOLDERS", "check_ldflags", "expand", "stamp_values"]

PLACEHOLDERS: tuple[str, ...] = (
    "Version",
    "Commit",
    "ShortCommit",
    "CommitDate",
    "CommitTimestamp",
)
_PLACEHOLDER = re.compile(r"\{\{\s*\.([A-Za-z][A-Za-z0-9]*)\s*\}\}")
_CLOCK = {"Date", "Timestamp", "Now"}
_FORBIDDEN = (
    ("\n", "newlines"),
    ("\r", "newlines"),
    ("'", "quotes"),
    ('"', "quotes"),
    ("`", "backticks"),
    ("$(", "'$(' command substitution"),
)


def _known() -> str:
    return ", ".join("{{." + name + "}}" for name in PLACEHOLDERS)


def check_ldflags(value: str) -> str:
    """Refuse what ``go build`` would not read as written, and unknown placeholders."""
    for bad, why in _FORBIDDEN:
        if bad in value:
            raise ValueError(f"{show(value)} must not contain {why}")
    for match in _PLACEHOLDER.finditer(value):
        name = match[1]
        if name in _CLOCK:
            raise ValueError(
                f"{match[0]} would stamp the clock, so no two builds would give the same "
                "binary and none would be served from cache; use {{.CommitDate}}, the "
                "source's time"
            )
        if name not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {match[0]}; known: {_known()}")
    rest = _PLACEHOLDER.sub("", value)
    if "{{" in rest or "}}" in rest:
        raise ValueError(
            f"{show(value)}: only plain placeholders such as {{{{.Commit}}}} are expanded "
            f"(no functions or pipes); known: {_known()}"
        )
    return value


def stamp_values(version: str, commit: str, created: str, epoch: int) -> dict[str, str]:
    """The placeholders' values for one build (``created`` RFC 3339, ``epoch`` the
    same instant in Unix seconds)."""
    return {
        "Version": version,
        "Commit": commit or "unknown",
        "ShortCommit": commit[:7] or "unknown",
        "CommitDate": created or "unknown",
        "CommitTimestamp": str(epoch),
    }


def expand(value: str, values: Mapping[str, str]) -> str:
    """``value`` with each placeholder replaced (it passed :func:`check_ldflags`)."""
    return _PLACEHOLDER.sub(lambda m: values[m[1]], value)
