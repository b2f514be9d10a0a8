"""Local web consoles: ``agora ui`` (a collaborator's) and ``agora admin ui`` (the operator's).

- :mod:`webui.security` Host/Origin checks, access token -> cookie, CSRF, body limit.
- :mod:`webui.hub`      live updates (server-sent events) from background threads.
- :mod:`webui.serve`    bind 127.0.0.1, print the address with its token, run uvicorn.
- :mod:`webui.operator` the operator's console over the broker's data directory.
- :mod:`webui.collab`   a collaborator's console: auction, messages, services.
"""
