"""The demo in a real browser: Debian's headless Chromium, driven by Playwright.

Uploads a picture through the page's own file input, waits for the answer, and checks that the
overlay, the four RefineNet panels (deep to shallow), the ten CRP panels, the legend and the
architecture diagram rendered with loaded images; then switches the reduction and a path off
through the page's controls. On a server started with ``--compare``, the "Compare the variants"
button shows one picture per variant and the disagreement map. Full-page screenshots are saved
to ``test-artifacts/``.

Chromium is installed by ``.ci/run`` (``apt-get install chromium``); Playwright's own browser
downloads are not used. Skipped, with the reason, only where /usr/bin/chromium is absent.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from .conftest import REPO, VARIANTS

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
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
TIMEOUT_MS = 120_000

LOADED_IMAGES = """(selector) => Array.from(document.querySelectorAll(selector + ' img'))
    .filter(img => img.complete && img.naturalWidth > 0)
    .map(img => img.alt || '')"""


@contextlib.contextmanager
def browser_page(url: str, profile: Path):
    """A Chromium page on ``url`` (skips the test where Debian's Chromium is absent)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            yield page
        finally:
            context.close()


@pytest.fixture
def page(app_server, tmp_path):
    with browser_page(app_server.url, tmp_path / "chromium-profile") as page:
        yield page


@pytest.fixture
def compare_page(compare_server, tmp_path):
    with browser_page(compare_server.url, tmp_path / "chromium-profile") as page:
        yield page


def loaded(page, selector: str) -> list[str]:
    """Alt texts (captions) of the fully loaded images inside ``selector``."""
    return page.evaluate(LOADED_IMAGES, selector)


def wait_for_images(page, selector: str, count: int) -> list[str]:
    page.wait_for_function(f"(sel) => ({LOADED_IMAGES})(sel).length >= {count}", arg=selector)
    return loaded(page, selector)


def test_upload_renders_every_panel(page, artifacts):
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    page.set_input_files("#input-image input[type=file]", str(REPO / "assets" / "synthetic-street-day.jpg"))

    wait_for_images(page, "#overlay", 1)
    stages = wait_for_images(page, "#stages", 4)
    assert [caption.split(" · ")[0] for caption in stages] == [
        "RefineNet-4",
        "RefineNet-3",
        "RefineNet-2",
        "RefineNet-1",
    ]
    crp = wait_for_images(page, "#crp", 10)
    assert crp[0].startswith("input") and crp[5].startswith("windows")
    wait_for_images(page, "#confidence", 1)
    assert page.locator("#legend tr").count() == 12  # header + 11 classes of the model's palette
    # Hovering a class in the legend shows its mask over the photo (the largest class is first).
    row = page.locator("#legend tbody tr").first
    mask = page.locator(f'#legend img.mask[data-class="{row.get_attribute("data-class")}"]')
    assert float(mask.evaluate("m => getComputedStyle(m).opacity")) == 0.0
    row.hover()
    page.wait_for_function("(m) => parseFloat(getComputedStyle(m).opacity) > 0.8", arg=mask.element_handle())
    # Feature maps arrive with one pixel per cell and are enlarged without smoothing.
    assert page.evaluate("() => getComputedStyle(document.querySelector('#stages img')).imageRendering") == "pixelated"
    assert page.locator("#architecture svg").count() == 1
    assert "RefineNet-4" in page.locator("#architecture").inner_text()
    overlay_size = page.evaluate(
        "() => { const i = document.querySelector('#overlay img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert overlay_size == [640, 480]

    # A view option re-renders the panels (from the session cache).
    before = page.evaluate("() => Array.from(document.querySelectorAll('#stages img')).map(i => i.src)")
    page.get_by_text("channel L2 norm", exact=True).click()
    page.wait_for_function(
        "(old) => { const now = Array.from(document.querySelectorAll('#stages img'))"
        ".map(i => i.src); return now.length === 4 && now.every((s, k) => s !== old[k]); }",
        arg=before,
    )
    # Switching the 1/32 path off runs the network again and paints what changed.
    page.locator("#ablation-path").get_by_text("1/32", exact=True).click()
    wait_for_images(page, "#ablated", 1)
    wait_for_images(page, "#changes", 1)
    page.wait_for_function("() => document.body.innerText.includes('Without the 1/32 path')")

    shot = artifacts / "browser-demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    assert page.locator(".toast-body.error, .toast-wrap .error").count() == 0


def test_compare_section_shows_every_variant_and_the_disagreement(compare_page, artifacts):
    page = compare_page
    page.wait_for_selector("#input-image input[type=file]", state="attached")
    page.set_input_files("#input-image input[type=file]", str(REPO / "assets" / "synthetic-street-day.jpg"))
    wait_for_images(page, "#overlay", 1)  # the upload segmented first, as on any page
    assert page.locator("#compare-models").inner_text().count("test mIoU") == len(VARIANTS)
    page.locator("#compare-button").click()
    captions = wait_for_images(page, "#compare-variants", len(VARIANTS))
    assert len(captions) == len(VARIANTS)
    assert [caption.split(" · ")[0] for caption in captions] == [name for name, *_ in VARIANTS]
    assert captions[0].endswith("test mIoU 61.25") and captions[1].endswith("test mIoU not measured")
    wait_for_images(page, "#disagreement", 1)
    size = page.evaluate(
        "() => { const i = document.querySelector('#disagreement img'); return [i.naturalWidth, i.naturalHeight]; }"
    )
    assert size == [224, 168]
    page.wait_for_function("() => document.querySelector('#disagreement-key').innerText.includes('All 3 variants')")
    key = page.locator("#disagreement-key").inner_text()
    assert "all 3 agree" in key and "2 of 3 differ from the most common class" in key
    shot = artifacts / "browser-compare.png"
    page.screenshot(path=str(shot), full_page=True)
    assert page.locator(".toast-body.error, .toast-wrap .error").count() == 0
