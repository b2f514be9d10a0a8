"""agora's shared package: what broker, agents and auctioneer must agree on.

Wire constants (:mod:`agora.protocol`), error types (:mod:`agora.errors`), crypto
envelopes and key handling (:mod:`agora.crypto`), frame codecs (:mod:`agora.wire`) and
safe file writing (:mod:`agora.files`). Nothing here opens a socket, except the
multicast helpers of :mod:`agora.multicast` that auctioneer and agents must share.
"""

__version__ = "0.1.0"
