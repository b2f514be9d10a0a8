"""agora's shared package: what broker, agents and auctioneer must agree on.

Wire constants (:mod:`agora.protocol`), error types (:mod:`agora.errors`), crypto
envelopes and key handling (:mod:`agora.crypto`), frame codecs (:mod:`agora.wire`) and
safe file writing (:mod:`agora.files`). Nothing here uses a socket; :mod:`agora.sockets`
makes ZeroMQ sockets with agora's safety settings and :mod:`agora.multicast` the UDP ones,
so that every part builds them the same way.
"""

__version__ = "0.1.0"
