"""A real browser for the UI tests: Debian's headless chromium, driven through Playwright, logging in
through Airflow's own login page as a person would."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

from conftest import unavailable

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def browser_page():
    """A fresh page (no cookies) in headless chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (make test installs it)")
    if not shutil.which(CHROMIUM):
        unavailable(f"{CHROMIUM} is missing (make test installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        finally:
            browser.close()


def log_in(page, api_url: str, user: str, password: str, next_path: str) -> None:
    """Airflow's login form, filled and sent; the browser ends up on `next_path` with its session cookie."""
    page.goto(f"{api_url}/auth/login?{urlencode({'next': api_url + next_path})}")
    page.locator("input:not([type=password])").first.fill(user)
    page.locator("input[type=password]").fill(password)
    page.locator("input[type=password]").press("Enter")
    page.wait_for_url(f"{api_url}{next_path}*", timeout=30_000)


def distinct_colours(png: Path) -> int:
    """How many different colours a screenshot holds: a blank page has one."""
    from PIL import Image

    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))
