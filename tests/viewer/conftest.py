"""Fixtures for the viewer tests: stores made by real runs, a real server, real Chromium."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from viewer_support import (  # noqa: E402
    EXPECT_TIMEOUT_MS,
    chromium,
    make_sample_store,
    start_viewer,
    stop_process,
)


def _sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer-store")
    path = folder / "store.duckdb"
    return path, make_sample_store(path, folder / "inputs")


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    """(store path, {run name: run id}) for a store written by real runs; tests only read it."""
    from notebook_exp.store import close_all

    yield _sample(tmp_path_factory)
    close_all()


@pytest.fixture(scope="module")
def browser_store(tmp_path_factory):
    """Like ``sample``, for one browser module (its live-run test adds a run)."""
    from notebook_exp.store import close_all

    yield _sample(tmp_path_factory)
    close_all()


@pytest.fixture
def state(sample):
    from notebook_exp_viewer.state import ViewerState

    return ViewerState(sample[0])


@pytest.fixture(scope="module")
def viewer(browser_store):
    """The URL of ``python -m notebook_exp_viewer`` serving ``browser_store`` (one per module)."""
    proc, url = start_viewer(browser_store[0])
    yield url
    stop_process(proc)


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


class PageWatch:
    """What a page did that a test may assert on: dialogs, non-local requests, failures."""

    def __init__(self, page, base_url: str) -> None:
        self.dialogs: list[str] = []
        self.external: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._on_dialog)
        page.on("request", lambda r: self._on_request(r.url, base_url))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_request(self, url: str, base_url: str) -> None:
        if not url.startswith((base_url, "blob:", "data:")):
            self.external.append(url)


@pytest.fixture
def page(browser, viewer):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(EXPECT_TIMEOUT_MS)
    page.watch = PageWatch(page, viewer)
    yield page
    context.close()
    # whatever the test checked, a script error in the page is a failure of the viewer
    assert page.watch.errors == [], f"the page raised: {page.watch.errors}"
