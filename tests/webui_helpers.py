"""Helpers for the web console tests: a signed-in HTTP client for a console's app."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what it runs on here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from webui.security import Access, Guard

PORT = 48123  # only a name in Host/Origin: TestClient never opens a socket


def console_client(app, access: Access, signed_in: bool = True) -> TestClient:
    """A client that talks to ``app`` behind its Guard as the console's own page does."""
    client = TestClient(Guard(app, access), base_url=f"http://127.0.0.1:{access.port}",
                        follow_redirects=False)
    if signed_in:
        answer = client.get(f"/?token={access.token}")
        assert answer.status_code == 303, answer.text
    return client


def post(client: TestClient, access: Access, body: dict | None = None, **kwargs):
    """A state-changing request as the page sends it: Origin and CSRF header."""
    headers = {"Origin": f"http://127.0.0.1:{access.port}", "X-Agora-CSRF": access.csrf,
               **kwargs.pop("headers", {})}
    return client.post("/api/action", json=body, headers=headers, **kwargs)
