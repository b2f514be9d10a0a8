"""Error types shared by broker, agents and auctioneer.

Like h11: :class:`LocalError` means the calling code or the local user did something
wrong; :class:`RemoteError` means the other side said no (it carries the wire
:class:`~agora.protocol.ErrorCode`); :class:`ProtocolError` means a peer sent something
that is not agora. Messages are one line and never contain a secret.
"""

from __future__ import annotations

from agora.protocol import ErrorCode


class AgoraError(Exception):
    """Base of every error agora raises on purpose."""


class LocalError(AgoraError):
    """The local user or calling code made a mistake (bad argument, wrong password...)."""


class WrongPassword(LocalError):
    """The password does not open the credentials file."""


class CredentialsMissing(LocalError):
    """There is no credentials file where one was expected."""


class CredentialsBusy(LocalError):
    """Another agora process holds the credentials lock for too long."""


class NoBroker(LocalError):
    """A directory that holds no broker: an operator command refuses instead of making one."""


class MessageTooLarge(LocalError):
    """A message is over the size limit; it was not sent."""


class ProtocolError(AgoraError):
    """A peer sent something that is not a valid agora message."""


class BadKey(ProtocolError):
    """A public key that is malformed, all zeros or of low order (refused as bad-request)."""


class UnauthenticatedRefusal(ProtocolError):
    """A refusal that came in clear (Kind.ERROR): anyone could have sent it, so it is a hint
    to check (e.g. log in again), never an answer to act on."""

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(f"unauthenticated refusal {code}: {message}")


class BrokerUnreachable(AgoraError):
    """No answer from the broker within the timeout, after retries."""


class AuctioneerUnreachable(AgoraError):
    """No answer from the auctioneer within the timeout, after retries."""


class PeerError(AgoraError):
    """A peer-to-peer conversation failed (no answer, refused, bad key)."""


class PeerOffline(PeerError):
    """The collaborator has no listening session."""


class PeerTimeout(PeerError):
    """The peer did not answer in time (gone, restarting or not listening)."""


class PeerClosed(PeerError):
    """The peer closed the conversation (BYE) before acknowledging every message sent."""


class RemoteError(AgoraError):
    """The other side refused a request; ``code`` says why.

    ``authenticated`` is False for a refusal that came in clear (AGORA/2 Kind.ERROR): anyone
    on the path could have sent it, so it must never be taken as the answer to a request.
    """

    def __init__(self, code: ErrorCode | str, message: str, authenticated: bool = True,
                 ) -> None:
        self.authenticated = authenticated
        try:
            self.code = ErrorCode(code)
        except ValueError:
            self.code = ErrorCode.INTERNAL
        self.message = message
        super().__init__(message)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}
