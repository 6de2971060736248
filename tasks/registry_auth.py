"""Registry credentials by registry host, for the base images pulled and the
references pushed.

``registry_secret_block`` names a Prefect Secret block holding one of:

- one credential, ``"username:password"`` or ``{"username": …, "password": …}``:
  for every registry the build publishes to, and for base images pulled from
  those registries (a company registry often holds both the mirrors and the
  services);
- credentials per registry host, ``{"ghcr.io": {"username": …, "password": …},
  "registry.corp:5000": "user:token"}``, or a Docker ``config.json`` pasted whole
  (``{"auths": {"ghcr.io": {"auth": "<base64 user:password>"}}}``, what
  ``docker login`` writes; a credential store's entries hold nothing to read):
  each host's for pushes to it and for the builder or runtime image pulled from
  it, such as a private mirror of ``golang`` and ``alpine``.

Without a block, ``GOBUILD_REGISTRY_USERNAME``/``GOBUILD_REGISTRY_PASSWORD`` give one
credential, as above. A pull from a host with no credential here is anonymous,
or what the engine's own client has (``docker login`` on the machine that runs it).

The engine keeps registry credentials per session and host (core/schema/
container.go ``withRegistryAuth`` adds them to the session's auth provider when
the field resolves), and ``from`` resolves its address when it resolves, with
them; so a chain that pulls a private base image says ``withRegistryAuth`` before
``from``. Every password reaches the engine as a Dagger secret named by its block
and host (:func:`tasks.secrets.secret_name`), never as text.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tasks.imageref import DOCKER_HUB, DOCKER_HUB_HOSTS, parse_image_ref
from tasks.secrets import (
    Credentials,
    CredentialsError,
    decoded,
    load_secret_block,
    parse_credentials,
    secret_name,
)

if TYPE_CHECKING:
    import dagger

    from tasks.params import BuildParams

_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")


def registry_host(ref: str) -> str:
    """The registry host of an image reference, as the engine keys credentials
    (Docker Hub's names and shorthand are ``docker.io``)."""
    return parse_image_ref(ref).registry


def repository(ref: str) -> str:
    """An image reference's repository as the engine names it (``alpine`` is
    ``docker.io/library/alpine``), to match what an engine message names with a
    parameter; '' for what is not a reference."""
    try:
        parsed = parse_image_ref(ref)
    except ValueError:
        return ""
    return f"{parsed.registry}/{parsed.registry_path}"


def _config_host(key: str) -> str:
    """A registry host from a key of a Docker config's ``auths`` (which may be a
    URL: ``https://index.docker.io/v1/``) or of a host map."""
    host = re.sub(r"^[a-z]+://", "", key.strip()).split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_HOSTS else host


@dataclass(frozen=True)
class RegistryAuth:
    """Who the build is to registries: one credential for the registries it
    publishes to (``shared``), or one per host (``by_host``)."""

    shared: Credentials | None = None
    by_host: dict[str, Credentials] = field(default_factory=dict)
    push_hosts: frozenset[str] = frozenset()

    def for_host(self, host: str) -> Credentials | None:
        if self.shared is not None:
            return self.shared if host in self.push_hosts else None
        return self.by_host.get(host)

    def secret_kind(self, host: str) -> str:
        """The Dagger secret's kind for ``host``: one name for the shared credential,
        one per host otherwise, so two hosts of one block never share a name."""
        if self.shared is not None:
            return "registry-password"
        return "registry-password-" + re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")


def parse_registry_secret(value: object, block: str, push_hosts: frozenset[str]) -> RegistryAuth:
    """The block's value in any of the forms of the module docstring. Errors name
    the block and, for a host map, the host; never a value."""
    value = decoded(value)
    if isinstance(value, str) or (
        isinstance(value, dict) and ("username" in value or "password" in value)
    ):
        return RegistryAuth(shared=parse_credentials(value, block), push_hosts=push_hosts)
    stores = {"credsStore", "credHelpers"}
    if isinstance(value, dict) and "auths" not in value and stores & set(value):
        raise CredentialsError(
            f"registry_secret_block: secret {block!r} is a Docker config whose credentials "
            "live in a credential store (credsStore, credHelpers), which holds none to read "
            'here: give its "auths" entries, or credentials per registry host'
        )
    entries = value.get("auths") if isinstance(value, dict) and "auths" in value else value
    if not isinstance(entries, dict) or not entries:
        raise CredentialsError(
            f"registry_secret_block: secret {block!r} must hold 'username:password', "
            '{"username": ..., "password": ...}, or credentials per registry host '
            '({"ghcr.io": {"username": ..., "password": ...}} or a Docker config\'s "auths")'
        )
    by_host: dict[str, Credentials] = {}
    for key, entry in entries.items():
        host = _config_host(str(key))
        # Docker's rule for a registry host: a dot or a port, or localhost.
        if not _HOST.fullmatch(host) or not ("." in host or ":" in host or host == "localhost"):
            raise CredentialsError(
                f"registry_secret_block: secret {block!r} has an entry {str(key)[:80]!r} "
                "that is not a registry host (e.g. ghcr.io or registry.example.com:5000)"
            )
        by_host[host] = _host_credentials(entry, block, host)
    return RegistryAuth(by_host=by_host, push_hosts=push_hosts)


def _host_credentials(entry: object, block: str, host: str) -> Credentials:
    if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
        try:
            text = base64.b64decode(entry["auth"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            text = ""
        entry = text
    try:
        return parse_credentials(entry, block)
    except CredentialsError:
        raise CredentialsError(
            f"registry_secret_block: secret {block!r} holds no usable credentials for "
            f'{host!r}: give \'username:password\', {{"username": ..., "password": ...}} '
            'or a Docker config "auth" (a credential store\'s entries hold none)'
        ) from None


async def load_registry_auth(params: BuildParams) -> RegistryAuth | None:
    """The build's registry credentials, read at run time (the Secret block, else
    the environment); None when there are none."""
    push_hosts = frozenset(registry_host(ref) for ref in params.image_refs)
    if params.registry_secret_block:
        value = await load_secret_block(params.registry_secret_block, "registry_secret_block")
        return parse_registry_secret(value, params.registry_secret_block, push_hosts)
    user = os.environ.get("GOBUILD_REGISTRY_USERNAME", "")
    password = os.environ.get("GOBUILD_REGISTRY_PASSWORD", "")
    if user and password:
        return RegistryAuth(shared=Credentials(user, password), push_hosts=push_hosts)
    return None


def with_registry_auth(
    ctr: dagger.Container, host: str, auth: RegistryAuth | None
) -> dagger.Container:
    """``ctr`` with the credential for ``host``, if the build has one: before a
    ``from`` of an image there, or a ``publish`` to it."""
    creds = auth.for_host(host) if auth is not None else None
    if auth is None or creds is None:
        return ctr
    from dagger import dag

    secret = dag.set_secret(secret_name(auth.secret_kind(host), creds.origin), creds.password)
    return ctr.with_registry_auth(host, creds.username, secret)


async def pull_auth(params: BuildParams, image: str) -> RegistryAuth | None:
    """The credentials to read before pulling ``image``: read only when some
    credential may be for its host (a host map, or a registry the build publishes
    to), so that other builds cost no Secret block read."""
    if image == "scratch":
        return None
    host = registry_host(image)
    push_hosts = {registry_host(ref) for ref in params.image_refs}
    if not params.registry_secret_block and host not in push_hosts:
        return None
    return await load_registry_auth(params)
