"""Every refusal of the consoles' shared guard, run against each console (one suite).

Only the holder of the URL's token gets in (then by cookie); Host and Origin are checked on
every request, the event stream included; state changes need the CSRF value; bodies are
bounded; bad input gets a one-line error and the console keeps serving.
"""

from __future__ import annotations

import pytest

from tests.webui_helpers import PORT, console_client, post
from webui.hub import EventHub
from webui.operator import OperatorConsole, operator_app
from webui.security import MAX_BODY, Access


def make_operator(broker):
    console = OperatorConsole(broker.data_dir, EventHub())
    return operator_app, console, console.close


def make_collab(broker):
    from webui.collab import CollabConsole, collab_app

    agent = broker.agent("Ana Lima")
    console = CollabConsole(agent, EventHub(), "auctioneer", "tcp://127.0.0.1:1",
                            "127.0.0.1", 1.0, follow_auction=False)
    console.start()
    return collab_app, console, console.close


CONSOLES = {"operator": make_operator, "collab": make_collab}


@pytest.fixture(params=sorted(CONSOLES))
def console(request, broker):
    """``(app, access, kind)`` for each console, with the guard in front."""
    factory, state, close = CONSOLES[request.param](broker)
    access = Access(PORT)
    app = factory(state, access)
    yield app, access, request.param
    close()


def test_the_token_is_exchanged_for_a_cookie_and_dropped_from_the_address(console):
    app, access, _ = console
    client = console_client(app, access, signed_in=False)
    answer = client.get(f"/?token={access.token}")
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"agora_ui_{PORT}=") and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower() and access.token not in cookie
    assert client.get("/").status_code == 200
    assert client.get("/api/state").status_code == 200


@pytest.mark.parametrize("path", ["/", "/api/state", "/events", "/static/common.js"])
def test_no_cookie_no_entry(console, path):
    app, access, _ = console
    client = console_client(app, access, signed_in=False)
    answer = client.get(path)
    assert answer.status_code == 401
    assert "open the address (with its token)" in answer.text


def test_a_wrong_token_is_refused(console):
    app, access, _ = console
    client = console_client(app, access, signed_in=False)
    answer = client.get("/?token=" + "x" * 43)
    assert answer.status_code == 403 and "wrong access token" in answer.text
    assert "set-cookie" not in answer.headers
    client.cookies.set(access.cookie_name, access.token)  # the token is not the cookie
    assert client.get("/api/state").status_code == 401


@pytest.mark.parametrize("host", ["evil.example:48123", "127.0.0.1:1", "localhost", ""])
def test_a_wrong_host_is_refused_even_with_the_cookie(console, host):
    app, access, _ = console
    client = console_client(app, access)
    answer = client.get("/api/state", headers={"Host": host})
    assert answer.status_code == 400 and "wrong Host header" in answer.text


@pytest.mark.parametrize("path", ["/api/state", "/events"])
def test_another_origin_is_refused_on_reads_and_on_the_event_stream(console, path):
    app, access, _ = console
    client = console_client(app, access)
    answer = client.get(path, headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403 and "another origin" in answer.json()["error"]
    cross = client.get(path, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403


def test_a_forged_post_without_csrf_or_origin_is_refused(console):
    app, access, _ = console
    client = console_client(app, access)
    body = {"action": "revoke", "username": "ana.lima"}
    no_csrf = post(client, access, body, headers={"X-Agora-CSRF": ""})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]
    wrong = post(client, access, body, headers={"X-Agora-CSRF": "0" * 64})
    assert wrong.status_code == 403
    token_as_csrf = post(client, access, body, headers={"X-Agora-CSRF": access.token})
    assert token_as_csrf.status_code == 403
    other_origin = post(client, access, body, headers={"Origin": "http://evil.example"})
    assert other_origin.status_code == 403
    no_origin = client.post("/api/action", json=body, headers={"X-Agora-CSRF": access.csrf})
    assert no_origin.status_code == 403 and "Origin" in no_origin.json()["error"]
    # A simple cross-site form post carries neither: refused before anything runs.
    form = client.post("/api/action", data=body,
                       headers={"Origin": "null", "Sec-Fetch-Site": "cross-site"})
    assert form.status_code == 403


def test_a_huge_body_is_refused_and_the_console_keeps_serving(console):
    app, access, _ = console
    client = console_client(app, access)
    huge = post(client, access, {"action": "send", "text": "x" * (MAX_BODY + 1)})
    assert huge.status_code == 413 and "too large" in huge.json()["error"]

    def chunks():  # no Content-Length: the limit still holds while reading
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024

    streamed = client.post("/api/action", content=chunks(), headers={
        "Origin": f"http://127.0.0.1:{PORT}", "X-Agora-CSRF": access.csrf,
        "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/api/state").status_code == 200


@pytest.mark.parametrize("content,kind,error", [
    (b'{"action": "revoke", ', "application/json", "malformed JSON in the request"),
    (b"\xff\xfe", "application/json", "malformed JSON in the request"),
    (b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "application/json",
     "malformed JSON in the request"),
    (b'["revoke"]', "application/json", "the request must be a JSON object"),
    (b"action=%zz&&==", "application/x-www-form-urlencoded",
     "malformed form data in the request"),
    (b"<xml/>", "text/xml", "send JSON (application/json) or a form"),
])
def test_malformed_bodies_get_a_clear_error(console, content, kind, error):
    app, access, _ = console
    client = console_client(app, access)
    answer = client.post("/api/action", content=content, headers={
        "Origin": f"http://127.0.0.1:{PORT}", "X-Agora-CSRF": access.csrf,
        "Content-Type": kind})
    assert answer.status_code in (400, 415)
    assert answer.json() == {"error": error}
    assert client.get("/api/state").status_code == 200


def test_an_unknown_action_is_named_in_the_error(console):
    app, access, _ = console
    client = console_client(app, access)
    answer = post(client, access, {"action": "drop-tables"})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("unknown action 'drop-tables'; known: ")
    missing = post(client, access, {"username": "x"})
    assert missing.json()["error"].startswith("unknown action None")


def test_form_posts_work_like_json(console):
    app, access, kind = console
    client = console_client(app, access)
    answer = client.post("/api/action", data={"action": "nothing-here"}, headers={
        "Origin": f"http://127.0.0.1:{PORT}", "X-Agora-CSRF": access.csrf})
    assert answer.status_code == 400 and "unknown action 'nothing-here'" in answer.text
