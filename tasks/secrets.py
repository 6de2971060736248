"""Credentials from Prefect Secret blocks, kept out of logs and parameters.

Parameters name a Secret block, never a secret: the value is read at run time,
handed to the engine as a Dagger secret (``dag.set_secret``), and only ever shown
as ``***``. Registries take ``username``/``password``; private git sources take a
token, optionally with the username the git host expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return f"Credentials(username={self.username!r}, password=***)"


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


def _decoded(value: object) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def parse_credentials(value: object, block: str) -> Credentials:
    """Registry credentials: ``username:password`` or ``{"username", "password"}``."""
    value = _decoded(value)
    if isinstance(value, str):
        user, sep, password = value.partition(":")
        if sep and user and password:
            return Credentials(user, password)
    elif isinstance(value, dict) and value.get("username") and value.get("password"):
        return Credentials(str(value["username"]), str(value["password"]))
    raise CredentialsError(
        f"registry_secret_block: secret {block!r} must hold 'username:password' "
        'or {"username": ..., "password": ...}'
    )


def parse_git_token(value: object, block: str) -> Credentials:
    """A git HTTP token: the bare token, or ``{"token": ..., "username": ...}``.

    The username defaults to empty, which leaves the engine's own default in place.
    """
    value = _decoded(value)
    if isinstance(value, str) and value.strip():
        return Credentials("", value.strip())
    if isinstance(value, dict) and (value.get("token") or value.get("password")):
        token = str(value.get("token") or value.get("password"))
        return Credentials(str(value.get("username") or ""), token)
    raise CredentialsError(
        f"git_secret_block: secret {block!r} must hold a token, "
        'or {"username": ..., "token": ...}'
    )
