"""What the runtime image is told besides its entrypoint: default arguments,
environment, exposed ports, its working directory, its user and the files it needs.

These are what a Dockerfile's last stage says with ``CMD``, ``ENV``, ``EXPOSE``,
``WORKDIR``, ``USER`` and ``COPY``, and what a Go service needs more often than not: a cobra
command's subcommand (``serve``), ``GIN_MODE=release``, the port, and the
``templates/`` or ``migrations/`` it reads from disk relative to its working
directory. Each parameter's grammar is here; ``tasks.assemble`` applies them.

Everything here lands in the image's config or filesystem, which anyone who can
pull the image reads, and in the run's parameters, which Prefect stores and shows.
So an environment variable whose name says it holds a secret is refused, as is a
URL with credentials in it; neither is ever echoed back.
"""

from __future__ import annotations

import posixpath
import re
from typing import NamedTuple

from tasks.goenv import credentials_in_url
from tasks.imageref import show

__all__ = [
    "FILES_WORKDIR",
    "RUNTIME_USER",
    "Placement",
    "RuntimeFile",
    "check_exposed_ports",
    "check_runtime_args",
    "check_runtime_env",
    "check_runtime_files",
    "check_user",
    "check_workdir",
    "image_path",
    "image_workdir",
    "parse_port",
    "parse_runtime_file",
    "placements",
    "source_path",
]

# The working directory an image gets when runtime_files places files relative to
# it and runtime_workdir is empty: the common Dockerfile choice (`WORKDIR /app`).
FILES_WORKDIR = "/app"
# The distroless "nonroot" uid: numeric, so no /etc/passwd is needed.
RUNTIME_USER = "65532"

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names that say they hold a secret, as the last word: DB_PASSWORD, GITHUB_TOKEN,
# JWT_SECRET, STRIPE_API_KEY. The last word only, so TOKEN_URL or SECRET_PATH pass.
_SECRET_NAME_RE = re.compile(
    r"(?:^|_)(?:PASSWORD|PASSWD|PASS|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY"
    r"|CREDENTIALS?)$",
    re.IGNORECASE,
)
_PORT_RE = re.compile(r"(?P<port>\d{1,5})(?:/(?P<proto>[A-Za-z]+))?")


class RuntimeFile(NamedTuple):
    """One ``runtime_files`` entry: a path in the module, and where it goes."""

    source: str  # relative to module_dir, clean ('.' is the module's directory)
    target: str  # absolute, or relative to the image's working directory


def _controls(text: str) -> bool:
    return any(not ch.isprintable() for ch in text)


def check_runtime_args(args: list[str]) -> list[str]:
    for arg in args:
        if _controls(arg):
            raise ValueError(f"{show(arg)} must not contain newlines or control characters")
    return args


def check_runtime_env(env: dict[str, str]) -> dict[str, str]:
    """Names as a shell can set them; values one line and, like names, free of
    secrets. Values are never echoed: one may hold what should not be there."""
    for name, value in env.items():
        if not _ENV_NAME_RE.fullmatch(name):
            raise ValueError(
                f"name {show(name)} must be letters, digits and '_', not starting with a digit"
            )
        if _SECRET_NAME_RE.search(name):
            raise ValueError(
                f"{name} looks like a secret, and an image's environment is readable by "
                "anyone who can pull the image; give it to the container when it runs "
                "(a Kubernetes Secret, docker run -e)"
            )
        if _controls(value):
            raise ValueError(f"value of {name} must be one line without control characters")
        host = credentials_in_url(value, name)
        if host is not None:
            raise ValueError(
                f"value of {name} embeds credentials in a URL (host {host!r}), which anyone "
                "who can pull the image would read; give them to the container when it runs"
            )
    return env


def parse_port(spec: str | int) -> tuple[int, str]:
    """'8080', 8080, '8080/tcp' or '53/udp' -> (port, 'tcp' | 'udp')."""
    match = _PORT_RE.fullmatch(str(spec).strip())
    if match is None:
        if re.fullmatch(r"\d+-\d+(/\w+)?", str(spec).strip()):
            raise ValueError(f"{show(spec)} is a range; list each port on its own")
        raise ValueError(f"{show(spec)} must be PORT or PORT/PROTOCOL, e.g. 8080 or 53/udp")
    port = int(match["port"])
    proto = (match["proto"] or "tcp").lower()
    if not 1 <= port <= 65535:
        raise ValueError(f"{show(spec)} is not a port number (1-65535)")
    if proto not in ("tcp", "udp"):
        raise ValueError(f"{show(spec)} has protocol {match['proto']!r}; use tcp or udp")
    return port, proto


def check_exposed_ports(ports: list[str | int]) -> list[str]:
    """Each entry as the image config spells it ('8080/tcp'), each once."""
    seen: list[str] = []
    for spec in ports:
        port, proto = parse_port(spec)
        canonical = f"{port}/{proto}"
        if canonical in seen:
            raise ValueError(f"{show(spec)} is listed twice ({canonical})")
        seen.append(canonical)
    return seen


_NUMERIC_USER_RE = re.compile(r"\d+(?::\d+)?")
_NAMED_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}(?::[a-z_][a-z0-9_-]{0,31}|:\d{1,10})?")


def check_user(value: str, runtime_image: str | None) -> str:
    """UID[:GID], or NAME[:GROUP] that the base image's /etc/passwd must know;
    ``scratch`` has none, so there only numbers work."""
    if _NUMERIC_USER_RE.fullmatch(value):
        if any(int(part) > 2**31 - 1 for part in value.split(":")):
            raise ValueError(f"{show(value)} is out of range for a user or group ID")
        return value
    if not _NAMED_USER_RE.fullmatch(value):
        raise ValueError(
            f"{show(value)} must be UID[:GID] (e.g. 65532 or 1000:1000) or a user name "
            "the base image knows (e.g. nobody)"
        )
    if runtime_image == "scratch":
        raise ValueError(
            f"{show(value)} is a name, and scratch has no /etc/passwd to look it up in; "
            "give a number, e.g. 65532"
        )
    return value


def _clean_absolute(path: str) -> str:
    """normpath, and one leading '/' where it keeps two (POSIX lets '//x' differ)."""
    return posixpath.normpath(path).replace("//", "/", 1)


def check_workdir(value: str) -> str:
    """'' (the base image's, or FILES_WORKDIR for files placed relative to it), or
    an absolute path, cleaned."""
    if not value:
        return value
    if _controls(value) or "\\" in value:
        raise ValueError(f"{show(value)} must not contain backslashes or control characters")
    if not value.startswith("/"):
        raise ValueError(f"{show(value)} must be an absolute path in the image, e.g. /app")
    return _clean_absolute(value)


def parse_runtime_file(spec: str) -> RuntimeFile:
    """'SRC' or 'SRC:DEST'. SRC is a file or directory relative to module_dir
    (:func:`check_runtime_files` keeps it inside the source); DEST is absolute, or
    relative to the image's working directory, and defaults to SRC there when SRC
    is inside the module."""
    if _controls(spec) or "\\" in spec:
        raise ValueError(f"{show(spec)} must not contain backslashes or control characters")
    source, sep, target = spec.partition(":")
    if not source:
        raise ValueError(f"{show(spec)} names no source; write SRC or SRC:DEST, e.g. templates")
    if source.startswith("/"):
        raise ValueError(
            f"{show(spec)}: source {show(source)} must be relative to module_dir "
            "(files are taken from the source, not from this machine)"
        )
    clean_source = posixpath.normpath(source)
    if sep and not target:
        raise ValueError(f"{show(spec)} has an empty destination after ':'")
    if not target:
        if clean_source == "." or clean_source.split("/")[0] == "..":
            raise ValueError(
                f"{show(spec)} is not inside the module directory; name where it goes, "
                f"e.g. {source}:/app/{posixpath.basename(clean_source) or 'files'}"
            )
        target = clean_source
    elif target.startswith("/"):
        target = _clean_absolute(target)
    else:
        cleaned = posixpath.normpath(target)
        if cleaned == ".." or cleaned.startswith("../"):
            raise ValueError(
                f"{show(spec)}: destination must stay inside the working directory, "
                "or be an absolute path"
            )
        target = cleaned
    return RuntimeFile(clean_source, target)


def source_path(entry: RuntimeFile, module_dir: str) -> str:
    """The entry's source as a path in the source tree ('.' is its root); a
    monorepo's module may take files from beside it ('../shared/templates')."""
    return posixpath.normpath(posixpath.join(module_dir or ".", entry.source))


class Placement(NamedTuple):
    """One ``runtime_files`` entry resolved: where it is read, where it lands."""

    spec: str  # the entry as given
    source: str  # path in the source tree ('.' is its root)
    target: str  # absolute path in the image


def placements(specs: list[str], module_dir: str, workdir: str) -> tuple[str, list[Placement]]:
    """-> (the image's working directory, each entry resolved): the one reading
    of ``runtime_files`` that the parameter check, the load-source stage and the
    assemble stage share."""
    entries = [parse_runtime_file(spec) for spec in specs]
    landing = image_workdir(workdir, entries)
    return landing, [
        Placement(spec, source_path(entry, module_dir), image_path(entry, landing))
        for spec, entry in zip(specs, entries, strict=True)
    ]


def check_runtime_files(specs: list[str], module_dir: str, workdir: str) -> list[Placement]:
    """Each entry's grammar, its source inside the source tree, and no two entries
    landing at one path (one would silently replace the other)."""
    targets: dict[str, str] = {}
    _, resolved = placements(specs, module_dir, workdir)
    for place in resolved:
        if place.source.split("/")[0] == "..":
            raise ValueError(
                f"{show(place.spec)} leads outside the source (from module_dir {module_dir!r})"
            )
        if place.target in targets:
            raise ValueError(
                f"{show(place.spec)} and {show(targets[place.target])} both go to {place.target!r}"
            )
        targets[place.target] = place.spec
    return resolved


def image_workdir(workdir: str, files: list[RuntimeFile]) -> str:
    """The image's working directory: the one given, else FILES_WORKDIR when a file
    is placed relative to it, else '' (the base image's)."""
    if workdir:
        return workdir
    return FILES_WORKDIR if any(not f.target.startswith("/") for f in files) else ""


def image_path(entry: RuntimeFile, workdir: str) -> str:
    """Where an entry lands in the image: an absolute path."""
    if entry.target.startswith("/"):
        return entry.target
    return posixpath.normpath(posixpath.join(workdir or FILES_WORKDIR, entry.target))
