"""Sign-out on a shared workstation, in headless Chromium against `appliance gateway demo`: the same command, and so
the same demo identity provider (examples/demo-idp, its client registered by the command), that `make demo` ends
with. Signing out must end the IdP's session too (RP-initiated logout with id_token_hint and a registered
post_logout_redirect_uri), the page must say only what the IdP confirmed, and the next "Sign in" must ask for a
password. Also: the "Not allowed" page keeps the header, the sign-out and a way back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.fixtures.audit_trail import audit_records
from tests.fixtures.oidc import ensure_node_modules, free_port
from tests.fixtures.processes import stop_process

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass
class Demo:
    url: str
    idp: str
    data_dir: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`appliance gateway demo` in its own process (it starts the demo IdP itself), on free loopback ports."""
    ensure_node_modules()
    data_dir = tmp_path_factory.mktemp("demo") / "var"
    port, idp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_DATA_DIR=str(data_dir), APPLIANCE_POLICIES_DIR=str(REPO_ROOT / "policies"))
    log = (data_dir.parent / "demo.log").open("wb")
    command = [sys.executable, "-m", "appliance", "gateway", "demo", "--port", str(port), "--idp-port", str(idp_port)]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (data_dir.parent / "demo.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/login", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo gateway did not start"
            time.sleep(0.3)
        yield Demo(url, f"http://127.0.0.1:{idp_port}", data_dir)
    finally:
        stop_process(proc)
        log.close()


def _sign_in(page: Any, demo: Demo, user: str) -> None:
    """Press "Sign in" and, on the IdP's own login page (which must be shown), sign in as ``user``."""
    page.goto(f"{demo.url}/login")
    page.get_by_test_id("login").click()
    page.wait_for_selector("input[name=login]", timeout=15_000)  # the IdP asks: nobody is signed in there
    assert page.url.startswith(demo.idp)
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", "any-password-demo-idp")
    page.click("button[type=submit]")
    page.wait_for_url(f"{demo.url}/**")


def _sign_out_at_idp(page: Any, demo: Demo, *, confirm: bool) -> None:
    """Press "Sign out": the IdP's end-session page (not an error) asks; answer it."""
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{demo.idp}/**")
    assert "Identity provider error" not in page.content(), page.content()
    if confirm:
        page.click("button[name=logout][value=yes]")
    else:
        page.get_by_role("button", name="No, stay signed in").click()
    page.wait_for_url(f"{demo.url}/login")


def _logouts(demo: Demo) -> list[dict[str, Any]]:
    return [r for r in audit_records(demo.data_dir / "audit") if r["type"] == "auth.logout"]


def test_sign_out_ends_the_demo_idp_session(demo: Demo, browser: Any, artifacts_dir: Path) -> None:
    """Alice signs out; the IdP confirms and the page says so; the next "Sign in" asks for a password (carol)."""
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, demo, "alice")
    assert page.get_by_test_id("who").inner_text() == "Alice Analyst (demo)"
    _sign_out_at_idp(page, demo, confirm=True)
    assert page.get_by_test_id("login-message").inner_text() == (
        "You have signed out of the appliance and of the identity provider."
    )
    assert page.get_by_test_id("signout-warning").count() == 0
    page.screenshot(path=str(artifacts_dir / "gateway-demo-signed-out.png"), full_page=True)
    assert _logouts(demo)[-1]["details"] == {"reason": "user"}
    assert _logouts(demo)[-1]["actor"]["subject"] == "alice"
    _sign_in(page, demo, "carol")  # the IdP asked again: the next person is not alice
    assert page.get_by_test_id("who").inner_text() == "Carol Compliance (demo)"
    page.reload()
    assert page.get_by_test_id("login-message").count() == 0  # said once
    context.close()


def test_an_idp_session_that_goes_on_is_never_reported_as_ended(demo: Demo, browser: Any) -> None:
    """Alice keeps her IdP session at its sign-out page: the page says so, and "Sign in" still asks for a password."""
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, demo, "alice")
    _sign_out_at_idp(page, demo, confirm=False)
    warning = page.get_by_test_id("signout-warning").inner_text()
    assert "did not end your session" in warning and "Close the browser" in warning
    assert page.get_by_test_id("login-message").count() == 0
    _sign_in(page, demo, "carol")  # prompt=login: the IdP asks although alice's session there goes on
    assert page.get_by_test_id("who").inner_text() == "Carol Compliance (demo)"
    context.close()


def test_not_allowed_page_keeps_header_sign_out_and_a_way_back(demo: Demo, browser: Any, artifacts_dir: Path) -> None:
    """An analyst on the compliance page sees "Not allowed" with who is signed in, the sign-out and her pages."""
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, demo, "alice")
    page.goto(f"{demo.url}/compliance")
    assert page.locator("h1").inner_text() == "Not allowed"
    assert page.get_by_test_id("who").inner_text() == "Alice Analyst (demo)"
    page.screenshot(path=str(artifacts_dir / "gateway-demo-not-allowed.png"), full_page=True)
    page.get_by_test_id("way-back").get_by_role("link", name="Console").click()
    page.wait_for_url(f"{demo.url}/console")
    page.goto(f"{demo.url}/compliance")
    _sign_out_at_idp(page, demo, confirm=True)  # the sign-out works from the refusal page
    assert "of the identity provider" in page.get_by_test_id("login-message").inner_text()
    context.close()
