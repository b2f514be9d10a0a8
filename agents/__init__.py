"""The agora client side: what a collaborator's process runs.

- :mod:`agents.credentials` the local credentials file (Argon2id + SecretBox, 0600, locked).
- :mod:`agents.transport`   a reconnecting request socket to the broker ("Lazy Pirate").
- :mod:`agents.agent`       :class:`Agent`: register, login, call, logout.
- :mod:`agents.worker`      :class:`~agents.worker.ServiceWorker`: serve a service for the broker.
"""

from agents.agent import Agent, SessionInfo

__all__ = ["Agent", "SessionInfo"]
