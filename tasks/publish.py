"""Stage 4, publish: one image index, pushed to every requested reference.

The image is imported from the assembled OCI tarball, one container per
platform, so publishing needs no compile and works from a cached assemble. With
no references the tarball is the result and nothing is pushed.

Registry credentials come from a Prefect Secret block (JSON
``{"username": ..., "password": ...}`` or ``"username:password"``), or for local
runs from ``GOBUILD_REGISTRY_USERNAME``/``GOBUILD_REGISTRY_PASSWORD``. The password
goes to the engine only as a Dagger secret (``set_secret``), never as a parameter,
log line or artifact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import dagger
from dagger import dag
from prefect import task

from tasks.assemble import ImageArtifact
from tasks.params import BuildParams, parse_image_ref
from tasks.session import retry_options
from tasks.source import SourceInfo


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return f"Credentials(username={self.username!r}, password=***)"


class CredentialsError(ValueError):
    """The Secret block exists but does not hold usable credentials."""


def parse_credentials(value: object, block: str) -> Credentials:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            user, sep, password = value.partition(":")
            if not sep or not user or not password:
                raise CredentialsError(
                    f"registry_secret_block: secret {block!r} must hold 'username:password' "
                    'or {"username": ..., "password": ...}'
                ) from None
            return Credentials(user, password)
    if isinstance(value, dict) and value.get("username") and value.get("password"):
        return Credentials(str(value["username"]), str(value["password"]))
    raise CredentialsError(
        f"registry_secret_block: secret {block!r} must hold 'username:password' "
        'or {"username": ..., "password": ...}'
    )


async def load_credentials(params: BuildParams) -> Credentials | None:
    if params.registry_secret_block:
        from prefect.blocks.system import Secret

        try:
            block = await Secret.aload(params.registry_secret_block)
        except ValueError:
            raise CredentialsError(
                f"registry_secret_block: no Secret block named {params.registry_secret_block!r}"
            ) from None
        return parse_credentials(block.get(), params.registry_secret_block)
    user = os.environ.get("GOBUILD_REGISTRY_USERNAME", "")
    password = os.environ.get("GOBUILD_REGISTRY_PASSWORD", "")
    return Credentials(user, password) if user and password else None


def image_variants(image: ImageArtifact) -> list[dagger.Container]:
    """One container per platform, imported from the assembled tarball (lazy)."""
    tarball = dag.host().file(image.path)
    return [dag.container(platform=dagger.Platform(p)).import_(tarball) for p in image.platforms]


def with_auth(ctr: dagger.Container, ref: str, creds: Credentials | None) -> dagger.Container:
    if creds is None:
        return ctr
    registry = parse_image_ref(ref).domain or "docker.io"
    secret = dag.set_secret("gobuild-registry-password", creds.password)
    return ctr.with_registry_auth(registry, creds.username, secret)


@task(name="publish", **retry_options())
async def publish_image(params: BuildParams, image: ImageArtifact, source: SourceInfo) -> list[str]:
    """-> ``ref@sha256:…`` for every pushed reference (empty when none was asked for)."""
    refs = params.publish_refs(commit=source.commit, now=datetime.now(UTC))
    if not refs:
        return []
    creds = await load_credentials(params)
    variants = image_variants(image)
    published = []
    for ref in refs:
        ctr = with_auth(variants[0], ref, creds)
        published.append(await ctr.publish(ref, platform_variants=variants[1:]))
    return published
