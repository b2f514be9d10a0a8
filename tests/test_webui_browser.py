"""Both consoles in a real browser (Debian's chromium, driven by Playwright), against real
processes: a broker, an auctioneer, two ``agora ui`` and one ``agora admin ui``.

Screenshots of the auction and operator views are saved under tests/artifacts/ui.
Without chromium the test skips, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from agora.multicast import free_udp_port, random_group
from tests.test_auction_cli import Deployment, free_tcp_port
from tests.test_auction_net import write_item

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def browser_or_skip():
    """Playwright's sync API and the chromium path, or a skip (a failure in CI)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install '.[test]')"
    else:
        if os.path.exists(CHROMIUM):
            return sync_playwright
        reason = "chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    sync_playwright = browser_or_skip()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(10_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def site(tmp_path):
    d = Deployment(tmp_path)
    yield d
    d.stop()


def start_console(site: Deployment, *args: str) -> str:
    proc = site.start(*args, "--no-browser")
    return proc.expect(r"ready at (http://127\.0\.0\.1:\d+/\?token=\S+)").group(1)


@pytest.mark.time_limit(120)
def test_two_bidders_and_the_operator_in_a_real_browser(browser, site, tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    items = tmp_path / "items"
    items.mkdir()
    ports = (free_tcp_port(), free_tcp_port(), free_udp_port())
    endpoint = f"tcp://127.0.0.1:{ports[0]}"
    site.start_auctioneer(items, tmp_path / "auction", ports, random_group())
    urls = {}
    for who in ("Ana Lima", "Bob Costa"):
        urls[who] = start_console(site, "ui", "--home", site.homes[who][1], "--broker",
                                  site.endpoint, "--auctioneer", site.auctioneer[0],
                                  "--endpoint", endpoint)
    admin_url = start_console(site, "admin", "ui", "--data-dir", str(tmp_path / "broker"))

    ana, bob = browser.new_page(), browser.new_page()
    for page, who in ((ana, "Ana Lima"), (bob, "Bob Costa")):
        page.goto(urls[who])
        assert "token=" not in page.url  # exchanged for a cookie, dropped from the address
        expect(page.locator("#live")).to_have_text("live")
    expect(ana.locator("#me")).to_have_text("ana.lima")

    # The live item, on both pages.
    write_item(items, "01-lamp.json", "lamp", duration=6)
    for page in (ana, bob):
        expect(page.locator("#item-title")).to_have_text("The lamp (lamp)")
        expect(page.locator("#countdown")).to_have_text(re.compile(r"^\d+ s$"))

    # Bid +1 on one page: accepted there, and shown on the other within two seconds.
    ana.click("#bid-1")
    expect(ana.locator("#bid-result")).to_have_text("accepted: 10.00 on lamp")
    expect(bob.locator("#best")).to_have_text("10.00", timeout=2_000)
    expect(bob.locator("#best-bidder")).to_have_text("ana.lima", timeout=2_000)

    # A custom bid below the minimum is refused with the reason, and so is one with letters.
    bob.fill("#bid-amount", "9.50")
    bob.click("#bid-custom")
    expect(bob.locator("#bid-result")).to_have_text(
        "not sent: too low: the bid must be at least 11.00")
    bob.fill("#bid-amount", "12abc")
    bob.click("#bid-custom")
    expect(bob.locator("#bid-result")).to_contain_text("not a number")
    ana.screenshot(path=str(ARTIFACTS / "auction.png"), full_page=True)

    # The item closes: the same winner on both pages.
    for page in (ana, bob):
        expect(page.locator("#winner")).to_have_text("The lamp: sold to ana.lima for 10.00",
                                                     timeout=15_000)
    expect(bob.locator("#results tbody tr").first).to_contain_text("ana.lima")
    ana.screenshot(path=str(ARTIFACTS / "auction-closed.png"), full_page=True)

    # A message from one page arrives on the other.
    ana.fill("#msg-to", "bob.costa")
    ana.fill("#msg-text", "the lamp is mine")
    ana.click("#msg-send")
    expect(ana.locator("#send-result")).to_have_text("delivered")
    expect(bob.locator("#messages")).to_contain_text("the lamp is mine", timeout=5_000)

    # Phone width: nothing wider than the window.
    bob.set_viewport_size({"width": 390, "height": 844})
    assert bob.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    bob.screenshot(path=str(ARTIFACTS / "collab-phone.png"), full_page=True)
    bob.set_viewport_size({"width": 1280, "height": 900})

    # The operator revokes Bob: his page says he was signed out.
    admin = browser.new_page()
    admin.goto(admin_url)
    expect(admin.locator("#live")).to_have_text("live")
    row = admin.locator('tr[data-username="bob.costa"]')
    expect(row).to_contain_text("registered")
    row.get_by_role("button", name="revoke").click()
    expect(admin.locator("#confirm-text")).to_contain_text("Revoke bob.costa?")
    admin.click("#confirm-yes")
    expect(admin.locator("#notice")).to_have_text("bob.costa revoked: their sessions end now")
    expect(row).to_contain_text("revoked")
    expect(admin.locator("#audit tbody")).to_contain_text("revoke")
    admin.screenshot(path=str(ARTIFACTS / "operator.png"), full_page=True)
    expect(bob.locator("#session-banner")).to_contain_text("You were signed out",
                                                           timeout=8_000)
    expect(bob.locator("#session-banner")).to_contain_text("revoked")
    bob.screenshot(path=str(ARTIFACTS / "signed-out.png"), full_page=True)

    # SIGTERM stops every console cleanly (threads stopped, logged out, exit 0).
    for proc in site.procs[-3:]:
        assert proc.terminate() == 0, proc.stderr_lines[-3:]
