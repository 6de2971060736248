"""Credentials from Prefect Secret blocks, kept out of logs and parameters.

Parameters name a Secret block, never a secret: the value is read at run time,
handed to the engine as a Dagger secret (``dag.set_secret``), and only ever shown
as ``***``. Registries take ``username``/``password``; private git sources take a
token, optionally with the username the git host expects; private Go modules take
.netrc entries (``parse_go_auth``), which the compile stage mounts as a file.

Error messages name the block and the parameter, never the value, nor any part of
it: a malformed secret must not end up in a flow-run state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    origin: str = ""  # the Secret block they came from ('' for the environment)

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return f"Credentials(username={self.username!r}, password=***, origin={self.origin!r})"


def secret_name(kind: str, origin: str) -> str:
    """The name of the Dagger secret that carries credentials of ``kind`` from
    the Secret block ``origin`` ('' for the environment).

    The engine binds a secret's value to its name for the whole session, the
    latest ``setSecret`` of a name winning (core/secret.go SetSecretHandle: the
    handle is the name's; dagql/cache.go BindSessionResource), and builds may
    share a session (runs overlapping in one process, ``dagger run``). Builds
    whose credentials come from different blocks therefore get different names,
    or one would use the other's. A block's name is a parameter, not a secret;
    nothing of the value goes into a name, which the engine shows in its traces.
    """
    return f"gobuild-{kind}-{origin or 'env'}"


class CredentialsError(ValueError):
    """The Secret block is missing or does not hold usable credentials."""


async def load_secret_block(name: str, parameter: str) -> Any:
    """The value of Secret block ``name``; the error names the parameter that named it."""
    from prefect.blocks.system import Secret

    try:
        block = await Secret.aload(name)
    except ValueError:
        raise CredentialsError(f"{parameter}: no Secret block named {name!r}") from None
    return block.get()


def decoded(value: object) -> object:
    """A Secret block's value as given: JSON text read as JSON (the UI stores a
    pasted object as a string), anything else as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def parse_credentials(value: object, block: str) -> Credentials:
    """Registry credentials: ``username:password`` or ``{"username", "password"}``."""
    value = decoded(value)
    if isinstance(value, str):
        user, sep, password = value.partition(":")
        if sep and user and password:
            return Credentials(user, password, block)
    elif isinstance(value, dict) and value.get("username") and value.get("password"):
        return Credentials(str(value["username"]), str(value["password"]), block)
    raise CredentialsError(
        f"registry_secret_block: secret {block!r} must hold 'username:password' "
        'or {"username": ..., "password": ...}'
    )


def parse_git_token(value: object, block: str) -> Credentials:
    """A git HTTP token: the bare token, or ``{"token": ..., "username": ...}``.

    The username defaults to empty, which leaves the engine's own default in place.
    """
    value = decoded(value)
    if isinstance(value, str) and value.strip():
        return Credentials("", value.strip(), block)
    if isinstance(value, dict) and (value.get("token") or value.get("password")):
        token = str(value.get("token") or value.get("password"))
        return Credentials(str(value.get("username") or ""), token, block)
    raise CredentialsError(
        f"git_secret_block: secret {block!r} must hold a token, "
        'or {"username": ..., "token": ...}'
    )


@dataclass(frozen=True)
class NetrcEntry:
    """One ``machine HOST login USER password TOKEN`` line of a .netrc."""

    machine: str
    login: str
    password: str

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return f"NetrcEntry(machine={self.machine!r}, login={self.login!r}, password=***)"


@dataclass(frozen=True)
class GoAuth:
    """Credentials for the go command's module downloads, as .netrc entries.

    The go command reads ``$HOME/.netrc`` (GOAUTH's default, ``netrc``) and sends
    an entry's login and password with every HTTPS request whose URL starts with
    its machine, ``host[:port][/path]`` (cmd/go/internal/auth, Go 1.24+); git,
    which go runs for direct VCS fetches, reads the same file.
    """

    entries: tuple[NetrcEntry, ...]
    origin: str = ""  # the Secret block they came from

    def netrc(self) -> str:
        """The .netrc text, one entry a line."""
        return "".join(
            f"machine {e.machine} login {e.login} password {e.password}\n" for e in self.entries
        )

    def __repr__(self) -> str:
        return f"GoAuth(machines={[e.machine for e in self.entries]!r}, passwords=***)"


_NETRC_KEYS = {"machine", "login", "password", "account"}


def _netrc_entries(text: str) -> list[NetrcEntry]:
    """Entries of .netrc text, parsed as the go command does: whitespace-separated
    ``keyword value`` pairs, a ``machine`` starting each entry, ``default`` ending
    the file. Anything else (a bare token, ``macdef`` macros) gives no entries."""
    tokens = text.split()
    if not tokens or tokens[0] != "machine":
        return []
    entries: list[NetrcEntry] = []
    current: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        word = tokens[i]
        if word == "default":
            break
        if word not in _NETRC_KEYS or i + 1 >= len(tokens):
            return []
        if word == "machine":
            current = {}
        current[word] = tokens[i + 1]
        if {"machine", "login", "password"} <= current.keys():
            entries.append(NetrcEntry(current["machine"], current["login"], current["password"]))
            current = {}
        i += 2
    return entries


def _entry_from_mapping(item: Mapping[str, Any]) -> NetrcEntry | None:
    machine = item.get("machine") or item.get("host")
    login = item.get("login") or item.get("username")
    password = item.get("password") or item.get("token")
    if not (machine and login and password):
        return None
    return NetrcEntry(str(machine), str(login), str(password))


def parse_go_auth(value: object, block: str) -> GoAuth:
    """Go module credentials: .netrc text, or ``{"machine"/"host", "login"/"username",
    "password"/"token"}``, or a list of those.

    A machine may be given as a URL (``https://proxy.example:8443``): it is reduced
    to ``host[:port][/path]``, the form go matches. Values with whitespace cannot
    be written into a .netrc, so they are refused.
    """
    fail = CredentialsError(
        f"go_auth_secret_block: secret {block!r} must hold .netrc text "
        "('machine HOST[:PORT] login USER password TOKEN'), or "
        '{"machine": ..., "login": ..., "password": ...}, or a list of those'
    )
    value = decoded(value)
    entries: list[NetrcEntry] | None
    if isinstance(value, str):
        entries = _netrc_entries(value)
    elif isinstance(value, Mapping):
        entry = _entry_from_mapping(value)
        entries = [entry] if entry else None
    elif isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
        found = [_entry_from_mapping(item) for item in value]
        entries = [e for e in found if e] if all(found) else None
    else:
        entries = None
    if not entries:
        raise fail
    cleaned = []
    for n, entry in enumerate(entries, 1):
        machine = entry.machine.split("://", 1)[-1].rstrip("/")
        for what, text in (("machine", machine), ("login", entry.login)):
            if not text or any(ch.isspace() or not ch.isprintable() for ch in text):
                raise CredentialsError(
                    f"go_auth_secret_block: secret {block!r}, entry {n}: the {what} must be "
                    "one word (a .netrc cannot quote spaces)"
                )
        if any(ch.isspace() or not ch.isprintable() for ch in entry.password):
            raise CredentialsError(
                f"go_auth_secret_block: secret {block!r}, entry {n}: the password must not "
                "contain whitespace (a .netrc cannot quote it)"
            )
        cleaned.append(NetrcEntry(machine, entry.login, entry.password))
    return GoAuth(tuple(cleaned), block)
