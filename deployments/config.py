"""The nightly build's settings: a small TOML file, then environment overrides.

Operators change what the nightly builds far more often than they change code, so
the source, the image references and the timezone live in ``deployments/nightly.toml``
(another file with ``GOBUILD_NIGHTLY_CONFIG``), and a handful of ``GOBUILD_NIGHTLY_*``
variables override it for one machine or one container without editing a file.

Everything is validated when ``python -m deployments.serve`` starts, with the same
``parse_params`` the flow uses, so a typo is a one-line error naming the field and
where it came from, before anything is served, rather than a failed run at 02:00.

Prefect is imported only to check the schedule, after the parameters: most
mistakes are reported without paying for Prefect's start-up.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.params import ParamsError, parse_params
from tasks.sourcespec import is_git_url

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "NIGHTLY_CRON",
    "ConfigError",
    "NightlyConfig",
    "load_nightly_config",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().with_name("nightly.toml")
NIGHTLY_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"

# Environment variable -> parameter it overrides. Lists are comma or space separated.
_ENV_PARAMETERS = {
    "GOBUILD_NIGHTLY_SOURCE": "source",
    "GOBUILD_NIGHTLY_GIT_REF": "git_ref",
    "GOBUILD_NIGHTLY_IMAGE_REFS": "image_refs",
    "GOBUILD_NIGHTLY_OUTPUT": "output",
}
_LIST_PARAMETERS = {"image_refs", "platforms", "build_tags"}
_TOP_LEVEL_KEYS = {"timezone", "cron", "parameters"}


class ConfigError(ValueError):
    """The nightly configuration is unusable; the message is one line naming the field."""


@dataclass(frozen=True)
class NightlyConfig:
    """What the ``nightly`` deployment runs and when.

    ``parameters`` are ready for the flow: validated, with local paths made absolute
    (runs must not depend on the directory the serving process was started from).
    ``origins`` says where each setting came from, for messages and the start-up log.
    """

    cron: str
    timezone: str
    parameters: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)


def load_nightly_config(environ: Mapping[str, str] | None = None) -> NightlyConfig:
    """Read the config file and the environment; raise ``ConfigError`` if unusable.

    The file is ``GOBUILD_NIGHTLY_CONFIG`` or ``deployments/nightly.toml``. An explicit
    path that does not exist is an error; a missing default file just means that
    everything comes from the environment. Relative paths in the file are relative to
    the file, relative paths in the environment to the current directory.
    """
    env = os.environ if environ is None else environ
    explicit = env.get("GOBUILD_NIGHTLY_CONFIG", "")
    path = Path(explicit).expanduser() if explicit else DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    label = str(path)
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"nightly config {label}: not valid TOML: {exc}") from None
    elif explicit:
        raise ConfigError(f"GOBUILD_NIGHTLY_CONFIG: {label!r} is not a file")

    unknown = sorted(set(data) - _TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"nightly config {label}: unknown key {unknown[0]!r} "
            f"(expected {', '.join(sorted(_TOP_LEVEL_KEYS))}; build settings go under "
            "[parameters])"
        )
    raw_params = data.get("parameters", {})
    if not isinstance(raw_params, dict):
        raise ConfigError(f"nightly config {label}: [parameters] must be a table")

    params: dict[str, Any] = {}
    origins: dict[str, str] = {}
    base = path.resolve().parent
    for name, value in raw_params.items():
        params[name] = _absolute(name, value, base)
        origins[name] = f"{label} [parameters]"
    for var, name in _ENV_PARAMETERS.items():
        text = env.get(var, "")
        if not text:
            continue
        value: Any = text.replace(",", " ").split() if name in _LIST_PARAMETERS else text
        params[name] = _absolute(name, value, Path.cwd())
        origins[name] = var
    if "source" not in params:
        raise ConfigError(
            f"source: not configured; set [parameters] source in {label} or GOBUILD_NIGHTLY_SOURCE"
        )
    # A nightly build that publishes should also say so in its tags; an explicit
    # tag_nightly in the file still wins.
    if params.get("image_refs") and "tag_nightly" not in params:
        params["tag_nightly"] = True
        origins["tag_nightly"] = "image_refs are set"

    try:
        parse_params(params)
    except ParamsError as exc:
        raise ConfigError(
            "nightly config: " + "; ".join(_with_origin(p, origins) for p in exc.problems)
        ) from None

    timezone, tz_origin = _setting(env, data, "GOBUILD_NIGHTLY_TZ", "timezone", label)
    cron, cron_origin = _setting(env, data, "GOBUILD_NIGHTLY_CRON", "cron", label)
    timezone = timezone or DEFAULT_TIMEZONE
    cron = cron or NIGHTLY_CRON
    _check_schedule(cron, cron_origin, timezone, tz_origin)
    origins.update(cron=cron_origin or "default", timezone=tz_origin or "default")
    return NightlyConfig(cron=cron, timezone=timezone, parameters=params, origins=origins)


def _absolute(name: str, value: Any, base: Path) -> Any:
    """Anchor a relative local source or output path to ``base``."""
    if not isinstance(value, str) or not value:
        return value
    if name == "source" and not is_git_url(value):
        return str((base / Path(value).expanduser()).resolve())
    if name == "output":
        return str((base / Path(value).expanduser()).resolve())
    return value


def _with_origin(problem: str, origins: Mapping[str, str]) -> str:
    """``'source: ...'`` -> ``'source (from GOBUILD_NIGHTLY_SOURCE): ...'``."""
    where, sep, reason = problem.partition(": ")
    name = where.split("[", 1)[0]
    if sep and name in origins:
        return f"{where} (from {origins[name]}): {reason}"
    return problem


def _setting(
    env: Mapping[str, str], data: Mapping[str, Any], var: str, key: str, label: str
) -> tuple[str, str]:
    """A string setting from the environment or else the file, and where it came from."""
    if env.get(var):
        return env[var], var
    if key in data:
        value = data[key]
        if not isinstance(value, str):
            raise ConfigError(f"{key} (from {label}): must be a string, got {value!r}")
        return value, label
    return "", ""


def _check_schedule(cron: str, cron_origin: str, timezone: str, tz_origin: str) -> None:
    """Validate with Prefect's own schedule model, so the server cannot reject it later."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "cron"
        origin = tz_origin if name == "timezone" else cron_origin
        reason = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{name} (from {origin or 'default'}): {reason}") from None
