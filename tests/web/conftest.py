"""The web page's fixtures: one headless chromium for the module, a fresh browser context (a new
page, its requests recorded) per test, and a screenshot of the page when a test fails."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Debian's chromium, never a browser Playwright would download; nothing it may call outside.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so that a fixture knows the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Session:
    """A page of the web UI and every URL it requested."""

    page: object
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def session(browser, server, tmp_path, request):
    context = browser.new_context(
        viewport={"width": 1000, "height": 1200}, device_scale_factor=1, accept_downloads=True
    )
    # Generous waits: a model run on 2 busy cores can take a while; no assertion is timed.
    context.set_default_timeout(120_000)
    page = context.new_page()
    recorded = Session(page)
    page.on("request", lambda r: recorded.requests.append(r.url))
    page.goto(f"{server.url}/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    yield recorded
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failed page: {shot}")
    context.close()
