"""Fixtures for the web page's tests: Debian's Chromium driven by Playwright, on a real server.

The browser is the system's ``/usr/bin/chromium`` (``platform/setup-debian.sh``
installs it); nothing is downloaded at test time.  Playwright ends the browser
process it launched when the fixture closes it, pass or fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

from tests.servers import ServerProcess

CHROMIUM = "/usr/bin/chromium"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (see platform/setup-debian.sh)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser: Browser, server: ServerProcess) -> Iterator[Callable[..., Page]]:
    """``open_page(user, password)``: a fresh browser profile with the page open and logged in."""
    contexts = []

    def make(user: str, password: str, viewport: ViewportSize = DESKTOP) -> Page:
        context = browser.new_context(viewport=viewport, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors  # type: ignore[attr-defined]
        page.on("dialog", lambda dialog: dialog.accept())  # "Move to the trash?"
        page.goto(server.url + "/")
        log_in(page, user, password)
        page.wait_for_selector("#app:not([hidden])")
        return page

    yield make
    for context in contexts:
        errors = [e for page in context.pages for e in page.errors]  # type: ignore[attr-defined]
        context.close()
        assert not errors, f"the page raised: {errors}"


def log_in(page: Page, user: str, password: str) -> None:
    page.fill("#login-form input[name=user]", user)
    page.fill("#login-form input[name=password]", password)
    page.click("#login-form button[type=submit]")


def row(page: Page, name: str) -> str:
    """The selector of the listing's row of *name*."""
    return f'#listing tr[data-name="{name}"]'


def act(page: Page, name: str, action: str) -> None:
    """Choose *action* (Rename, Move, Delete, ...) in the menu of the row of *name*."""
    page.click(f"{row(page, name)} button[aria-haspopup]")
    page.click(f'#menu button[data-act="{action}"]')


def answer(page: Page, value: str) -> None:
    """Fill the open question dialog with *value* and press OK."""
    page.fill("#ask-input", value)
    page.click("#ask button[value=ok]")
    page.wait_for_selector("#ask", state="hidden")
