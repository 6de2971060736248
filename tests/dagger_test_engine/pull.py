"""``Container.from`` against a registry on loopback: the image's config, resolved
for real over the OCI distribution API with the session's credentials.

The real engine resolves a ``from`` address when the field resolves, not when
the container is used (core/schema/container.go ``from``:
``RegistryResolver.ResolveImageConfig`` with the container's platform), through a
resolver that answers the registry's challenge with the session's credentials
(``withRegistryAuth`` adds them: core/schema/container.go ``withRegistryAuth``,
``query.Auth().AddCredential``). A refused resolution fails the ``from`` field:
``failed to resolve image "REF" (platform: "PLATFORM"): …``, the inner text being
containerd's (remotes/docker: ``unexpected status from HEAD request to URL:
401 Unauthorized``). A tag is resolved once per session (``fromSessionScopeInput``),
a digest once.

Only loopback registries are reached (no other traffic leaves this machine); the
test engine has no image contents, so a pulled image brings its config, as
``engine.base_image_state`` models the public base images.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from .registry import INDEX_TYPES, LOOPBACK, _Auth, parse_target

MANIFEST_TYPES = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
]


class PullError(Exception):
    pass


def on_loopback(address: str) -> bool:
    """Whether ``address`` names an image in a registry on this machine."""
    registry = parse_target(address).registry
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    return host in LOOPBACK


def resolve_config(
    address: str, platform: str, credentials: tuple[str, str] | None, timeout: float = 30.0
) -> dict[str, Any]:
    """The image config (the ``config`` object of the image's config blob) of the
    ``platform`` image at ``address``; an index is matched by os, architecture and
    variant as containerd's platform matcher does for an exact platform."""
    target = parse_target(address)
    reference = address.rsplit("@", 1)[1] if "@" in address else target.tag
    username, password = credentials or ("", "")
    auth = _Auth(username, password, f"repository:{target.repository}:pull")
    with httpx.Client(auth=auth, timeout=timeout) as client:

        def get(url: str, accept: list[str] | None = None, method: str = "GET") -> bytes:
            headers = {"Accept": ", ".join(accept)} if accept else {}
            try:
                response = client.request(method, url, headers=headers)
            except httpx.HTTPError as exc:
                raise PullError(f"failed to do request: {method} {url}: {exc}") from None
            if response.status_code != 200:
                raise PullError(
                    f"unexpected status from {method} request to {url}: "
                    f"{response.status_code} {response.reason_phrase}"
                )
            return response.content

        # containerd's resolver asks with HEAD first (remotes/docker/resolver.go
        # Resolve), so a refusal names that request.
        url = f"{target.base}/manifests/{reference}"
        get(url, MANIFEST_TYPES, method="HEAD")
        body = get(url, MANIFEST_TYPES)
        manifest = json.loads(body)
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            os_, _, rest = platform.partition("/")
            arch, _, variant = rest.partition("/")
            chosen = [
                m
                for m in manifest.get("manifests", [])
                if m.get("platform", {}).get("os") == os_
                and m.get("platform", {}).get("architecture") == arch
                and (not variant or m.get("platform", {}).get("variant") == variant)
            ]
            if not chosen:
                raise PullError("no match for platform in manifest: not found")
            body = get(f"{target.base}/manifests/{chosen[0]['digest']}", MANIFEST_TYPES)
            manifest = json.loads(body)
        config = json.loads(get(f"{target.base}/blobs/{manifest['config']['digest']}"))
        return config.get("config") or {}
