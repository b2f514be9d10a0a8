"""The agora broker: enrollment store, registration, login and sessions, service calls.

- :mod:`broker.store`  SQLite (through sqlite-utils) with every durable fact.
- :mod:`broker.core`   the sans-I/O protocol engine: ``handle(identity, frames, now)``.
- :mod:`broker.server` the thin ZeroMQ ROUTER loop around it.
"""
