"""Who may talk to a local console, and what a page may send it: one layer for both consoles.

A console (``agora ui``, ``agora admin ui``) listens on 127.0.0.1 only and prints its address
with a one-time access token, as Jupyter does. :class:`Guard` is the ASGI middleware in
front of every route, the event stream included:

- ``Host`` must name this console (127.0.0.1 or localhost, this port): a page on another
  site that rebinds its DNS name to 127.0.0.1 is refused (400).
- ``Origin``, when sent, must be this console; a state-changing request must send one, and
  ``Sec-Fetch-Site``, when sent, must not say cross-site (403).
- Access: the URL's ``?token=`` is exchanged once for an HttpOnly, SameSite=Strict cookie
  (then a redirect drops the token from the address bar); every other request needs the
  cookie (401). The cookie carries a value derived from the token, not the token.
- Every state-changing request carries the CSRF value (derived from the token, written into
  the page) in the ``X-Agora-CSRF`` header (403 without it).
- A body over the size limit is refused (413) before it is read.

All comparisons are constant-time; the token never appears in a log (uvicorn's access log is
off) or in an error. :func:`read_action` turns a request body into ``(action, params)`` or a
:class:`PageError` with a one-line reason that the page shows.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from agora.jsontext import loads

#: Largest request body a page may send (a message, a service's arguments).
MAX_BODY = 64 * 1024
CSRF_HEADER = "x-agora-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD"})
LOCAL_NAMES = ("127.0.0.1", "localhost")


class PageError(Exception):
    """A request the console refuses; ``status`` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _equal(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Access:
    """One console's access token and the values derived from it; ``port`` names the cookie
    so that several consoles on this machine (all on 127.0.0.1) keep their own."""

    port: int
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def cookie_name(self) -> str:
        return f"agora_ui_{self.port}"

    @property
    def cookie_value(self) -> str:
        return _derive(self.token, "cookie")

    @property
    def csrf(self) -> str:
        return _derive(self.token, "csrf")

    @property
    def url(self) -> str:
        """The address to open: it carries the token, so print it only to the user."""
        return f"http://127.0.0.1:{self.port}/?{urlencode({'token': self.token})}"

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(f"{name}:{self.port}" for name in LOCAL_NAMES)

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{host}" for host in self.hosts)


def refusal(path: str, status: int, message: str) -> Response:
    """How a refusal looks: JSON for the page's scripts, plain text for a person."""
    if path.startswith(("/api/", "/events")):
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(message + "\n", status_code=status)


class Guard:
    """ASGI middleware: Host, Origin, access cookie, CSRF and body size, on every request."""

    def __init__(self, app: ASGIApp, access: Access, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.access = access
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no WebSocket here: close it unanswered
            await send({"type": "websocket.close", "code": 1008})
            return
        response = self.check(scope)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> Response | None:
        """None if the request may go on, else the response that refuses it."""
        headers = Headers(scope=scope)
        path, method = scope.get("path", "/"), scope["method"]
        if headers.get("host") not in self.access.hosts:
            return refusal(path, 400, "wrong Host header: open the address agora printed")
        origin = headers.get("origin")
        if origin is not None and origin not in self.access.origins:
            return refusal(path, 403, "request from another origin refused")
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return refusal(path, 403, "request from another site refused")
        unsafe = method not in SAFE_METHODS
        if unsafe and origin is None:
            return refusal(path, 403, "a request that changes something must come from the "
                           "console's own page (no Origin header)")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if "token" in query:
            return self._exchange(path, method, query)
        cookies = _cookies(headers)
        if not _equal(cookies.get(self.access.cookie_name), self.access.cookie_value):
            return refusal(path, 401, "not signed in to this console: open the address "
                           "(with its token) that agora printed")
        if unsafe and not _equal(headers.get(CSRF_HEADER), self.access.csrf):
            return refusal(path, 403, "missing or wrong CSRF value: reload the page")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return refusal(path, 413, f"request body too large (limit {self.max_body} bytes)")
        return None

    def _exchange(self, path: str, method: str, query: dict[str, str]) -> Response:
        """``?token=``: the right one, on a GET, becomes the cookie; anything else is refused."""
        if method != "GET" or not _equal(query.get("token"), self.access.token):
            return refusal(path, 403, "wrong access token: open the address agora printed")
        rest = {k: v for k, v in query.items() if k != "token"}
        target = path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(self.access.cookie_name, self.access.cookie_value, httponly=True,
                            samesite="strict", path="/")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def _cookies(headers: Headers) -> dict[str, str]:
    jar: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            jar.setdefault(name, value)
    return jar


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, refused (413) as soon as it grows past ``limit`` (chunked bodies too)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PageError(413, f"request body too large (limit {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_action(request: Request, actions: frozenset[str] | set[str],
                      ) -> tuple[str, dict[str, Any]]:
    """``(action, params)`` from a JSON object or a urlencoded form with an ``action`` field."""
    body = await read_body(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            params = loads(body.decode("utf-8"))
        except ValueError:  # not UTF-8, not JSON, or nested too deeply (TooDeep)
            raise PageError(400, "malformed JSON in the request") from None
        if not isinstance(params, dict):
            raise PageError(400, "the request must be a JSON object")
    elif kind == "application/x-www-form-urlencoded":
        try:
            params = dict(parse_qsl(body.decode("utf-8"), strict_parsing=bool(body),
                                    max_num_fields=100))
        except (UnicodeDecodeError, ValueError):
            raise PageError(400, "malformed form data in the request") from None
    else:
        raise PageError(415, "send JSON (application/json) or a form")
    action = params.pop("action", None)
    if not isinstance(action, str) or action not in actions:
        shown = action[:40] if isinstance(action, str) else action
        raise PageError(400, f"unknown action {shown!r}; known: {', '.join(sorted(actions))}")
    return action, params


def text_param(params: dict[str, Any], name: str, max_len: int = 200,
               required: bool = True) -> str:
    """A string parameter, stripped, at most ``max_len`` characters; PageError otherwise."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise PageError(400, f"{name} is missing")
        return ""
    if not isinstance(value, str):
        raise PageError(400, f"{name} must be text")
    value = value.strip()
    if required and not value:
        raise PageError(400, f"{name} is missing")
    if len(value) > max_len:
        raise PageError(400, f"{name} is longer than {max_len} characters")
    return value


async def page_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: a PageError becomes its one-line refusal."""
    assert isinstance(exc, PageError)
    return refusal(request.url.path, exc.status, exc.message)


def render_page(template: str, access: Access, **values: str) -> Response:
    """A page from a package template, with the CSRF value (never the token) filled in."""
    html = template.replace("{{csrf}}", access.csrf)
    for key, value in values.items():
        html = html.replace("{{" + key + "}}", _escape(value))
    return Response(html, media_type="text/html", headers={
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"})


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))
