"""The Go environment of a build: what the build sets, and what a user may add.

The build owns the cross-compilation settings: each target platform becomes
GOOS/GOARCH (and GOARM), kept here as data so the list of platforms this tool
supports and the way Go spells them cannot drift apart. A user may add only the
settings that decide where and how modules are fetched and verified
(``go help environment``, ``go help module-private``), through the ``go_env``
parameter; everything else (CGO_ENABLED, GOMODCACHE, -mod...) is the build's.
"""

from __future__ import annotations

import platform as _platform
import re
from urllib.parse import urlsplit

from tasks.imageref import show

__all__ = [
    "GO_ENV_KEYS",
    "SUPPORTED_PLATFORMS",
    "check_go_env",
    "check_platforms",
    "credentials_in_url",
    "default_platform",
    "goenv",
]

_PLATFORM_GOENV: dict[str, dict[str, str]] = {
    "linux/amd64": {"GOOS": "linux", "GOARCH": "amd64"},
    "linux/arm64": {"GOOS": "linux", "GOARCH": "arm64"},
    "linux/arm/v7": {"GOOS": "linux", "GOARCH": "arm", "GOARM": "7"},
    "linux/arm/v6": {"GOOS": "linux", "GOARCH": "arm", "GOARM": "6"},
    "linux/386": {"GOOS": "linux", "GOARCH": "386"},
    "linux/ppc64le": {"GOOS": "linux", "GOARCH": "ppc64le"},
    "linux/s390x": {"GOOS": "linux", "GOARCH": "s390x"},
    "linux/riscv64": {"GOOS": "linux", "GOARCH": "riscv64"},
}
SUPPORTED_PLATFORMS: tuple[str, ...] = tuple(_PLATFORM_GOENV)

# `platform.machine()` spellings -> OCI platform of a Linux engine on that host.
_MACHINE_PLATFORM = {
    "x86_64": "linux/amd64",
    "amd64": "linux/amd64",
    "aarch64": "linux/arm64",
    "arm64": "linux/arm64",
    "armv7l": "linux/arm/v7",
    "armv7": "linux/arm/v7",
    "armv6l": "linux/arm/v6",
    "i386": "linux/386",
    "i686": "linux/386",
    "x86": "linux/386",
    "ppc64le": "linux/ppc64le",
    "s390x": "linux/s390x",
    "riscv64": "linux/riscv64",
}

# GOAUTH is not among the keys a user may set: it may run commands, and
# credentials come from go_auth_secret_block as a mounted .netrc, which GOAUTH's
# default reads.
GO_ENV_KEYS: tuple[str, ...] = (
    "GOPROXY",
    "GOPRIVATE",
    "GONOPROXY",
    "GONOSUMDB",
    "GOSUMDB",
    "GOINSECURE",
    "GOFLAGS",
    "GOVCS",
)
# Values that are lists of patterns or hosts: Go splits them on ',' (and GOPROXY
# on '|'), never on spaces. GOFLAGS and GOSUMDB ("name+key url") take spaces.
_GO_ENV_SPACED = {"GOFLAGS", "GOSUMDB"}
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,|]+")


def default_platform() -> str:
    """The Linux platform matching this host, so a default build runs natively.

    The Dagger engine normally runs on the same machine as the flow (Docker
    Desktop on macOS runs a Linux VM of the host's architecture), and asking
    the engine itself would mean engine work during validation.
    """
    return _MACHINE_PLATFORM.get(_platform.machine().lower(), "linux/amd64")


def _unsupported(platform: str) -> ValueError:
    return ValueError(
        f"{show(platform)} is not a supported platform "
        f"(supported: {', '.join(SUPPORTED_PLATFORMS)})"
    )


def goenv(platform: str) -> dict[str, str]:
    """Go cross-compilation environment for an OCI platform string (a copy)."""
    try:
        return dict(_PLATFORM_GOENV[platform])
    except KeyError:
        raise _unsupported(platform) from None


def check_platforms(platforms: list[str]) -> list[str]:
    """At least one platform, each supported and listed once."""
    if not platforms:
        raise ValueError("at least one platform is required")
    seen: set[str] = set()
    for item in platforms:
        if item not in _PLATFORM_GOENV:
            raise _unsupported(item)
        if item in seen:
            raise ValueError(f"{show(item)} is listed twice")
        seen.add(item)
    return platforms


def check_go_env(go_env: dict[str, str]) -> dict[str, str]:
    """Each entry a known key with a one-line value and no credentials."""
    for key, value in go_env.items():
        _check_item(key, value)
    return go_env


def credentials_in_url(value: str, key: str) -> str | None:
    """The host of the first URL in ``value`` that carries a user or password,
    else None. Parameters are stored in Prefect and shown in its UI, so such a
    value must be refused, and the refusal must not echo it."""
    for url in _URL_IN_TEXT_RE.findall(value):
        try:
            parts = urlsplit(url)
            has_credentials = parts.username is not None or parts.password is not None
        except ValueError:
            raise ValueError(f"value of {key} has a malformed URL") from None
        if has_credentials:
            return parts.hostname or ""
    return None


def _check_item(key: str, value: str) -> None:
    if key not in GO_ENV_KEYS:
        if key == "GONOSUMCHECK":
            hint = " (not a Go setting; use GONOSUMDB=<patterns> or GOSUMDB=off)"
        elif key.upper() in GO_ENV_KEYS:
            hint = f" (did you mean {key.upper()!r}?)"
        elif key == "GOAUTH":
            hint = " (credentials come from go_auth_secret_block, as a .netrc)"
        else:
            hint = ""
        raise ValueError(f"key {show(key)} is not allowed{hint}; allowed: {', '.join(GO_ENV_KEYS)}")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"value of {key} must be one line without control characters")
    if key not in _GO_ENV_SPACED and any(ch.isspace() for ch in value):
        raise ValueError(f"value of {key} must not contain spaces (Go separates items with ',')")
    host = credentials_in_url(value, key)
    if host is not None:
        # Never echoed: the value holds a password. Parameters are stored in
        # Prefect and shown in the UI; credentials go in a Secret block.
        raise ValueError(
            f"value of {key} embeds credentials in a URL (host {host!r}); "
            "remove them and name a Prefect Secret block holding a .netrc in "
            "go_auth_secret_block"
        )
    if key == "GOFLAGS":
        for flag in value.split():
            if not flag.startswith("-"):
                raise ValueError(
                    f"GOFLAGS entry {show(flag)} is not a flag; each entry must be a "
                    "standalone -flag or -flag=value"
                )
            if flag.lstrip("-").split("=", 1)[0] == "mod":
                raise ValueError(
                    f"GOFLAGS must not set {show(flag)}: the build sets -mod itself "
                    "(-mod=readonly, or -mod=vendor for a vendored module)"
                )
