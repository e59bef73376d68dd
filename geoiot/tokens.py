"""Bearer tokens for the HTTP writes (device ingest, fence changes): the file format and the check.

One home for both, so the ingest gateway and the web server's fence API refuse and admit alike.
The file named by ``IOT_TOKENS_FILE`` holds one token per line, ``<token> <scope> [<track-id prefix>]``;
blank lines and lines starting with ``#`` are ignored. Tokens are compared as SHA-256 digests with
:func:`hmac.compare_digest` against every grant, so neither the length nor the position of a match
shows in the time a check takes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

SCOPES = ("ingest", "fences")
MIN_TOKEN_LENGTH = 16  # shorter tokens are guessable; the file is refused


class TokenFileError(ValueError):
    """The tokens file is malformed; the message names the line."""


@dataclass(frozen=True)
class Grant:
    """What one token may do: its scope and, optionally, the track ids it may write."""

    digest: bytes = b""  # SHA-256 of the token; the token itself is never kept
    scope: str = ""
    track_prefix: str = ""
    line: int = 0

    def allows_track(self, track_id: str) -> bool:
        return track_id.startswith(self.track_prefix)


@dataclass(frozen=True)
class Denied:
    """Why a request is refused: 401 without a usable bearer token, 403 with one that does not grant it."""

    status: int
    message: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse(text: str) -> tuple[Grant, ...]:
    """The grants of a tokens file's text; :class:`TokenFileError` names the first bad line."""
    grants: list[Grant] = []
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise TokenFileError(f"line {number}: expected '<token> <scope> [<track-id prefix>]'")
        token, scope = parts[0], parts[1]
        if scope not in SCOPES:
            raise TokenFileError(f"line {number}: scope {scope!r} is not one of {', '.join(SCOPES)}")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenFileError(f"line {number}: a token needs at least {MIN_TOKEN_LENGTH} characters")
        digest = _digest(token)
        if digest in seen:
            raise TokenFileError(f"line {number}: the same token appears twice")
        seen.add(digest)
        grants.append(Grant(digest, scope, parts[2] if len(parts) == 3 else "", number))
    return tuple(grants)


class Tokens:
    """The grants of one tokens file, checked in constant time per grant."""

    def __init__(self, grants: tuple[Grant, ...]) -> None:
        self.grants = grants

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"{path}: {exc}") from None
        try:
            return cls(parse(text))
        except TokenFileError as exc:
            raise TokenFileError(f"{path}: {exc}") from None

    def __len__(self) -> int:
        return len(self.grants)

    def check(self, authorization: str | None, scope: str) -> Grant | Denied:
        """The grant an ``Authorization`` header carries for ``scope``, or why it is refused."""
        if not authorization:
            return Denied(401, "a bearer token is required (Authorization: Bearer <token>)")
        kind, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            return Denied(401, "the Authorization header must be 'Bearer <token>'")
        digest = _digest(token)
        found: Grant | None = None
        for grant in self.grants:  # every grant is compared: the time does not depend on which matched
            if hmac.compare_digest(grant.digest, digest):
                found = grant
        if found is None:
            return Denied(403, "the token is not valid")
        if found.scope != scope:
            return Denied(403, f"the token's scope is {found.scope!r}, this needs {scope!r}")
        return found
