"""``Container.publish`` for the Dagger test engine: a real OCI distribution push.

Blobs go up with the monolithic upload (POST then PUT ``?digest=``), platform
manifests by digest, then the top manifest or image index by tag, the way
BuildKit pushes. Auth follows the registry's challenge (Basic, or Bearer from a
token realm) with the credentials given by ``withRegistryAuth``. Plain HTTP is
used only for loopback registries, as BuildKit does for ``localhost``.

Written on httpx rather than oras-py: oras-py uploads only image manifests (its
JSON-schema check refuses image indexes) and retries inside its own requests,
which would hide from the product the very faults its retries must handle.
Errors read like the engine's (``failed to push …: 503 Service Unavailable``) and
never contain the password.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import httpx

LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


class PushError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    registry: str
    repository: str
    tag: str

    @property
    def base(self) -> str:
        host = self.registry.rsplit(":", 1)[0] if ":" in self.registry else self.registry
        scheme = "http" if host in LOOPBACK else "https"
        return f"{scheme}://{self.registry}/v2/{self.repository}"


def parse_target(address: str) -> Target:
    name = address.split("@", 1)[0]
    tag = "latest"
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = "docker.io", name if "/" in name else f"library/{name}"
    return Target(registry, repository, tag)


class _Auth(httpx.Auth):
    """Answer the registry's challenge: Basic directly, Bearer via its token realm."""

    def __init__(self, username: str, password: str, scope: str) -> None:
        self.username, self.password, self.scope = username, password, scope
        self._header: str | None = None

    def auth_flow(self, request: httpx.Request):
        if self._header:
            request.headers["Authorization"] = self._header
        response = yield request
        if response.status_code != 401 or not self.username:
            return
        challenge = response.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("basic"):
            self._header = httpx.BasicAuth(self.username, self.password)._auth_header
        elif challenge.lower().startswith("bearer"):
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            token_response = yield httpx.Request(
                "GET",
                params.get("realm", ""),
                params={"service": params.get("service", ""), "scope": self.scope},
                headers={
                    "Authorization": httpx.BasicAuth(self.username, self.password)._auth_header
                },
            )
            if token_response.status_code != 200:
                return
            body = json.loads(token_response.read() or b"{}")
            self._header = f"Bearer {body.get('token') or body.get('access_token', '')}"
        else:
            return
        request.headers["Authorization"] = self._header
        yield request


def push(
    address: str,
    top: dict,
    blobs: dict[str, bytes],
    username: str = "",
    password: str = "",
    timeout: float = 30.0,
) -> str:
    """Push an image (``top`` descriptor plus every blob it reaches); -> digest."""
    target = parse_target(address)
    scope = f"repository:{target.repository}:pull,push"

    def fail(what: str) -> PushError:
        text = f"failed to push {address}: {what}"
        return PushError(text.replace(password, "***") if password else text)

    try:
        with httpx.Client(auth=_Auth(username, password, scope), timeout=timeout) as client:

            def check(response: httpx.Response, method: str, ok: tuple[int, ...]) -> None:
                if response.status_code in ok:
                    return
                reason = f"{response.status_code} {response.reason_phrase}"
                if response.status_code == 401:
                    raise fail(f"authorization failed: {reason} (check the registry credentials)")
                retry_after = response.headers.get("Retry-After")
                hint = f" (Retry-After: {retry_after})" if retry_after else ""
                raise fail(
                    f"unexpected status from {method} request to {response.request.url}: "
                    f"{reason}{hint}"
                )

            top_blob = blobs[top["digest"]]
            manifest = json.loads(top_blob)
            children = manifest.get("manifests", []) if top["mediaType"] in INDEX_TYPES else []
            image_manifests = [json.loads(blobs[c["digest"]]) for c in children] or [manifest]
            needed = []
            for m in image_manifests:
                needed += [m["config"]["digest"], *(layer["digest"] for layer in m["layers"])]
            for digest in dict.fromkeys(needed):
                head = client.head(f"{target.base}/blobs/{digest}")
                if head.status_code == 200:
                    continue
                start = client.post(f"{target.base}/blobs/uploads/")
                check(start, "POST", (202,))
                location = start.headers["Location"]
                if location.startswith("/"):
                    location = f"{target.base.split('/v2/')[0]}{location}"
                sep = "&" if "?" in location else "?"
                put = client.put(
                    f"{location}{sep}digest={digest}",
                    content=blobs[digest],
                    headers={"Content-Type": "application/octet-stream"},
                )
                check(put, "PUT", (201,))
            for child in children:
                r = client.put(
                    f"{target.base}/manifests/{child['digest']}",
                    content=blobs[child["digest"]],
                    headers={"Content-Type": child["mediaType"]},
                )
                check(r, "PUT", (201,))
            r = client.put(
                f"{target.base}/manifests/{target.tag}",
                content=top_blob,
                headers={"Content-Type": top["mediaType"]},
            )
            check(r, "PUT", (201,))
    except httpx.TransportError as exc:
        raise fail(f"failed to do request: {type(exc).__name__}: {exc}") from None
    return top["digest"]
