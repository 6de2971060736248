"""What a user sees in both Prefect UIs, read in a real browser (headless Chromium).

Users start builds from the Prefect UI's "Custom run" form and read the deployments'
descriptions there, so API checks of the text are not enough: the two UIs render it
differently. Prefect 3.9's server serves two UIs from one port: V1 (Vue) at ``/`` and
V2 (React) at ``/v2`` (``/ui-settings`` names both; ``PREFECT_SERVER_UI_V2_ENABLED``
only chooses which one a bare ``/`` redirects to). V1 renders parameter descriptions as
Markdown (so ``<...>`` text vanishes and ``*``/``_`` pairs become emphasis), V2 shows
them as plain text (so Markdown backticks show literally), and both render deployment
descriptions as Markdown. These tests open, in each UI, the on-demand deployment's
custom-run form and every deployment's description, and compare the rendered DOM text
with the parameter schema and descriptions the API holds.

The server and the deployments are the real ones of ``tests/server_fixtures.py``
(``python -m deployments.serve``), except that this module's server has its UIs on.
Screenshots of every page go to ``GOBUILD_UI_SCREENSHOTS`` (default
``build/ui-screenshots``) so that a person can look at them; their paths are printed at
the end of the module. ``python scripts/ui_screenshots.py`` runs this module for that.

Chromium is Debian's ``chromium`` (``scripts/test.sh`` installs it), driven by the PyPI
``playwright`` package; no browser is downloaded. A missing Chromium fails the tests
(they are never skipped).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.registry_fixtures import free_port
from tests.server_fixtures import (
    ROOT,
    SERVER_START_TIMEOUT,
    PrefectServer,
    Served,
    running_prefect_server,
    wait_for,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

FLOW = "multistage-build"
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TZ = "Europe/Berlin"  # GOBUILD_NIGHTLY_TZ of the `served` fixture
SCREENSHOTS_ENV = "GOBUILD_UI_SCREENSHOTS"
# Flags that keep Chromium from reaching out on its own: without the
# background-networking ones its connections are refused in bulk on sandboxed hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: the first load of a UI bundle on a loaded 2-core machine takes a while.
PAGE_TIMEOUT_MS = 180_000
VIEWPORT = {"width": 1400, "height": 1000}
MAX_SCREENSHOT_HEIGHT = 8000


@dataclass(frozen=True)
class UI:
    """One of the server's two UIs."""

    name: str  # "v1" or "v2", as /ui-settings calls them
    base: str  # path prefix of its pages

    def url(self, server: PrefectServer, path: str) -> str:
        return f"{origin(server)}{self.base}{path}"


UIS = [UI("v1", ""), UI("v2", "/v2")]


def origin(server: PrefectServer) -> str:
    return server.url.removesuffix("/api")


def chromium_path() -> str:
    """Debian's Chromium (``GOBUILD_CHROMIUM`` names another); fails, never skips."""
    path = os.environ.get("GOBUILD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"Chromium not found at {path}: the UI tests need it; install Debian's "
            "`chromium` (scripts/test.sh does, as root: apt-get install -y "
            "--no-install-recommends chromium) or set GOBUILD_CHROMIUM",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``tests/server_fixtures.py``'s server (which ``served`` then uses), with both UIs
    on: there the UI is off to save start-up time. The UI bundles are copied into this
    server's own directory rather than into the installed prefect package, which other
    servers on this machine may be copying at the same time."""
    base = tmp_path_factory.mktemp("prefect-ui-server")
    port = free_port()
    ui = {
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_STATIC_DIRECTORY": str(base / "ui"),
    }
    with running_prefect_server(base, extra_env=ui, port=port) as server:

        def ui_ready() -> bool:
            try:
                return httpx.get(f"{origin(server)}/ui-settings", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the Prefect UIs", ui_ready, timeout=SERVER_START_TIMEOUT, procs=[server.proc])
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; each test gets its own context."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the UI tests need the PyPI package playwright: pip install -e '.[test]'",
            pytrace=False,
        )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Screenshots:
    """Where screenshots go, and those taken so far."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    def take(self, page: Page, name: str) -> Path:
        """The whole page: the viewport is grown to the app's scrolling content first
        (the apps scroll inside their own containers, which a full-page screenshot of
        the document would cut off)."""
        height = page.evaluate(
            "Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))"
        )
        size = {"width": VIEWPORT["width"], "height": min(int(height), MAX_SCREENSHOT_HEIGHT)}
        page.set_viewport_size(size)
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        page.set_viewport_size(VIEWPORT)
        self.taken.append(path)
        return path


@pytest.fixture(scope="module")
def screenshots(request: pytest.FixtureRequest) -> Iterator[Screenshots]:
    """Screenshots kept after the run (not in a temporary directory), listed at the
    module's end, so that a person can look at what the assertions read."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or ROOT / "build" / "ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    shots = Screenshots(folder.resolve())
    yield shots
    lines = [f"UI screenshots ({len(shots.taken)}) in {shots.folder}:"]
    lines += [f"  {path}" for path in shots.taken]
    # Past pytest's output capturing, which would otherwise swallow the list.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines), flush=True)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page in a fixed locale and time zone, so that the text does not depend
    on the machine."""
    context = browser.new_context(
        viewport=VIEWPORT, locale="en-US", timezone_id="UTC", color_scheme="light"
    )
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    new_page = context.new_page()
    try:
        yield new_page
    finally:
        context.close()


def deployment(server: PrefectServer, name: str) -> dict[str, Any]:
    with server.client() as api:
        r = api.get(f"/deployments/name/{FLOW}/{name}")
        r.raise_for_status()
        return r.json()


def open_page(page: Page, url: str, *, until_text: str) -> None:
    """Load a page of the single-page app and wait until ``until_text`` is visible
    (the API answers arrive after the page's own load), then for network idle and
    fonts, so that screenshots show the finished page."""
    page.goto(url, wait_until="load")
    page.get_by_text(until_text, exact=True).first.wait_for(state="visible")
    page.wait_for_load_state("networkidle")
    page.evaluate("document.fonts.ready.then(() => true)")


# For each expected text: the innermost elements whose whitespace-normalised text is
# exactly it, with what a reader would miss (hidden, clipped) and any Markdown
# formatting that crept in (<em>, <code>, ...).
_FIND_TEXTS_JS = """
(expected) => {
  const norm = (s) => s.replace(/\\s+/g, " ").trim();
  const all = [...document.querySelectorAll("body *")];
  return expected.map((text) => all
    .filter((el) => norm(el.textContent) === text
      && ![...el.children].some((c) => norm(c.textContent) === text))
    .map((el) => {
      const box = el.getBoundingClientRect();
      const style = getComputedStyle(el);
      return {
        tag: el.tagName.toLowerCase(),
        visible: box.width > 0 && box.height > 0 && style.visibility !== "hidden",
        clipped: el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1,
        inner_text: norm(el.innerText),
        markup: [...el.querySelectorAll("em, strong, b, i, code, del, s, img")]
          .map((e) => e.tagName.toLowerCase()),
      };
    }));
}
"""


def rendered(page: Page, texts: list[str]) -> dict[str, list[dict[str, Any]]]:
    found = page.evaluate(_FIND_TEXTS_JS, texts)
    return dict(zip(texts, found, strict=True))


def assert_shown_in_full(page: Page, texts: dict[str, str], where: str) -> None:
    """Each text (keyed by what it describes) is on the page exactly as written,
    visible, not clipped, and without Markdown formatting applied to it."""
    problems = []
    for text, hits in rendered(page, list(texts.values())).items():
        what = next(k for k, v in texts.items() if v == text)
        good = [
            h
            for h in hits
            if h["visible"] and not h["clipped"] and not h["markup"] and h["inner_text"] == text
        ]
        if not good:
            problems.append(f"{what}: {text!r} is not shown in full as written; found {hits}")
    assert not problems, f"{where}:\n" + "\n".join(problems)


def page_lines(page: Page) -> list[str]:
    """The page's visible text, one non-empty line per block, as a reader sees it."""
    return [line.strip() for line in page.inner_text("body").splitlines() if line.strip()]


def test_server_serves_both_uis(prefect_server: PrefectServer) -> None:
    """The URLs these tests use are the ones the server announces."""
    settings = httpx.get(f"{origin(prefect_server)}/ui-settings", timeout=30).json()
    assert settings["available_uis"] == ["v1", "v2"], settings
    assert (settings["v1_base_url"], settings["v2_base_url"]) == ("/", "/v2"), settings
    assert settings["api_url"] == prefect_server.url, settings


@pytest.mark.parametrize("ui", UIS, ids=[ui.name for ui in UIS])
def test_custom_run_form_shows_every_description_and_requires_source(
    ui: UI,
    prefect_server: PrefectServer,
    served: Served,
    page: Page,
    screenshots: Screenshots,
) -> None:
    on_demand = deployment(prefect_server, "on-demand")
    schema = on_demand["parameter_openapi_schema"]
    props: dict[str, dict[str, Any]] = schema["properties"]
    assert schema["required"] == ["source"]
    ordered = sorted(props, key=lambda name: props[name]["position"])
    last = props[ordered[-1]]["description"]

    open_page(
        page,
        ui.url(prefect_server, f"/deployments/deployment/{on_demand['id']}/run"),
        until_text=last,
    )
    shot = screenshots.take(page, f"{ui.name}-on-demand-custom-run")

    where = f"{ui.name} custom-run form of on-demand ({shot})"
    assert_shown_in_full(page, {name: props[name]["description"] for name in ordered}, where)
    lines = page_lines(page)
    text = "\n".join(lines)
    assert "`" not in text, where
    assert "*" not in text, where
    # Each field: its label, "(Optional)" unless required, and right under it its
    # description: so a description is read as belonging to its field.
    for name in ordered:
        label = props[name]["title"] + ("" if name in schema["required"] else " (Optional)")
        description = props[name]["description"]
        at = [i for i, line in enumerate(lines) if line == label]
        assert any(lines[i + 1 : i + 2] == [description] for i in at), (
            f"{where}: {name}: no line {label!r} followed by its description; lines: {lines}"
        )
    assert "Source (Optional)" not in lines, where

    # Submitting without a source is refused in the form, and no run is created.
    with prefect_server.client() as api:
        filter_body = {"deployments": {"id": {"any_": [on_demand["id"]]}}}
        before = api.post("/flow_runs/count", json=filter_body).json()
        page.get_by_role("button", name="Submit").click()
        page.get_by_text("'source' is a required property").first.wait_for(state="visible")
        screenshots.take(page, f"{ui.name}-on-demand-submit-without-source")
        page.wait_for_load_state("networkidle")
        assert api.post("/flow_runs/count", json=filter_body).json() == before, where


@pytest.mark.parametrize("name", ["nightly", "on-demand", "on-push"])
@pytest.mark.parametrize("ui", UIS, ids=[ui.name for ui in UIS])
def test_deployment_description_reads_as_written(
    ui: UI,
    name: str,
    prefect_server: PrefectServer,
    served: Served,
    page: Page,
    screenshots: Screenshots,
) -> None:
    dep = deployment(prefect_server, name)
    description: str = dep["description"]
    open_page(
        page,
        ui.url(prefect_server, f"/deployments/deployment/{dep['id']}?tab=Description"),
        until_text=description,
    )
    shot = screenshots.take(page, f"{ui.name}-{name}-description")
    where = f"{ui.name} page of {name} ({shot})"

    assert_shown_in_full(page, {"description": description}, where)
    assert "`" not in description and not re.search(r"[<>]", description), where
    if name != "nightly":
        assert "*" not in description, where
        return
    # The nightly description names its schedule; the cron's asterisks are its only ones.
    assert f"on cron '{NIGHTLY_CRON}' in timezone {NIGHTLY_TZ}." in description, where
    assert "*" not in description.replace(NIGHTLY_CRON, ""), where
    for variable in ("GOBUILD_NIGHTLY_SOURCE", "GOBUILD_NIGHTLY_CRON", "GOBUILD_NIGHTLY_TZ"):
        assert variable in description, where
    # ... and the schedule card agrees with it (Prefect words the cron itself).
    assert any(line.startswith("At 02:00 AM") for line in page_lines(page)), where
