"""The linker flags of a build: the version stamp, and what only the run knows.

Go programs take their version, commit and build date through ``-ldflags -X``
(GoReleaser's convention: ``main.version``, ``main.commit``, ``main.date``). The
commit and its time are only known once the source is loaded (a git URL's ref is
resolved by the engine), so the ``ldflags`` parameter may name them with
placeholders, expanded at compile time:

- ``${VERSION}``: the version stamped into ``version_variable``;
- ``${COMMIT}``, ``${SHORT_COMMIT}`` (7 characters): the source's commit,
  ``unknown`` for a directory that is not a git checkout;
- ``${COMMIT_DATE}`` (RFC 3339) and ``${COMMIT_TIMESTAMP}`` (Unix seconds): the
  source's time, as in the image's ``created`` label (the commit time of a local
  checkout, the newest file's time of a plain directory, the Unix epoch for a
  git URL, whose time the engine's git API does not give).

Not GoReleaser's ``{{.Commit}}``: Prefect owns ``{{ }}`` in parameters, and
``prefect deploy`` replaces a placeholder it does not know with nothing, so
``-X main.commit={{.Commit}}`` in prefect.yaml would reach the build as
``-X main.commit=`` without a word (``prefect.utilities.templating.apply_values``).
That spelling is refused with the one to write. Every ``$`` starts a
placeholder (``$$`` is a literal one), so ``$COMMIT`` cannot pass silently as
text. There is no build date: the clock would make every build's binary differ,
and an unchanged source would never be served from cache.

The value is split on spaces by ``go build``, not by a shell, so quotes and
substitutions, which would not work as they read, are refused.

Go's linker stamps only a string variable: ``-X main.version=1.0`` on a program
whose ``version`` is ``flag.String(...)`` (golang/example's outyet) fails the
link with ``main.version: cannot set with -X: not a var of type string``. The
default ``version_variable`` is this tool's choice, not the program's, so such a
program is built without that stamp, with a note (:func:`stamp_refused`); a
``version_variable`` someone chose fails, with a hint (``tasks/gohints.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tasks.imageref import show

__all__ = [
    "DEFAULT_VERSION_VARIABLE",
    "NOT_A_STRING",
    "PLACEHOLDERS",
    "check_ldflags",
    "expand",
    "stamp_refused",
    "stamp_values",
]

DEFAULT_VERSION_VARIABLE = "main.version"
NOT_A_STRING = "cannot set with -X: not a var of type string"

PLACEHOLDERS: tuple[str, ...] = (
    "VERSION",
    "COMMIT",
    "SHORT_COMMIT",
    "COMMIT_DATE",
    "COMMIT_TIMESTAMP",
)
_DOLLAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|)")
_GORELEASER = re.compile(r"\{\{\s*\.?([A-Za-z]*)[^}]*\}\}")
_GORELEASER_NAMES = {
    "Version": "VERSION",
    "Commit": "COMMIT",
    "FullCommit": "COMMIT",
    "ShortCommit": "SHORT_COMMIT",
    "CommitDate": "COMMIT_DATE",
    "CommitTimestamp": "COMMIT_TIMESTAMP",
}
_CLOCK = {"DATE", "BUILD_DATE", "TIMESTAMP", "NOW", "Date", "Timestamp", "Now"}
_FORBIDDEN = (
    ("\n", "newlines"),
    ("\r", "newlines"),
    ("'", "quotes"),
    ('"', "quotes"),
    ("`", "backticks"),
    ("$(", "'$(' command substitution"),
)


def _known() -> str:
    return ", ".join("${" + name + "}" for name in PLACEHOLDERS)


def _clock(name: str) -> ValueError:
    return ValueError(
        f"{name} would stamp the clock, so no two builds would give the same binary and "
        "none would be served from cache; use ${COMMIT_DATE}, the source's time"
    )


def check_ldflags(value: str) -> str:
    """Refuse what ``go build`` would not read as written, and unknown placeholders."""
    for bad, why in _FORBIDDEN:
        if bad in value:
            raise ValueError(f"{show(value)} must not contain {why}")
    if m := _GORELEASER.search(value):
        if m[1] in _CLOCK:
            raise _clock(m[0])
        ours = _GORELEASER_NAMES.get(m[1])
        instead = f"write ${{{ours}}}" if ours else f"placeholders are {_known()}"
        raise ValueError(
            f"{m[0]}: Prefect's deployment templating owns {{{{ }}}} and would blank it; {instead}"
        )
    for m in _DOLLAR.finditer(value):
        if m[0] == "$$":
            continue
        if m[1] is None:
            raise ValueError(
                f"{show(value)}: a '$' starts a placeholder such as ${{COMMIT}} "
                "(write $$ for a literal $)"
            )
        if m[1] in _CLOCK:
            raise _clock(m[0])
        if m[1] not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {m[0]}; known: {_known()}")
    return value


def stamp_values(version: str, commit: str, created: str, epoch: int) -> dict[str, str]:
    """The placeholders' values for one build (``created`` RFC 3339, ``epoch`` the
    same instant in Unix seconds)."""
    return {
        "VERSION": version,
        "COMMIT": commit or "unknown",
        "SHORT_COMMIT": commit[:7] or "unknown",
        "COMMIT_DATE": created or "unknown",
        "COMMIT_TIMESTAMP": str(epoch),
    }


def expand(value: str, values: Mapping[str, str]) -> str:
    """``value`` with each placeholder replaced and ``$$`` made ``$`` (it passed
    :func:`check_ldflags`)."""
    return _DOLLAR.sub(lambda m: "$" if m[0] == "$$" else values[m[1]], value)


def stamp_refused(stderr: str, version_variable: str) -> bool:
    """Whether go's linker refused ``-X`` on ``version_variable`` because the
    program's variable of that name is not a string."""
    return f"{version_variable}: {NOT_A_STRING}" in (stderr or "")
