"""Transport security and identity for the router: TLS material, bearer tokens, user-id hashing.

TLS uses gRPC's own SSL credentials (server side on the router's port, client side on the
router->backend channels). Tokens are compared in constant time. A salted user-id hash lets an
exposure log be joined per user without holding raw ids: HMAC-SHA256 keyed with a secret salt
that never enters the log (I: 128 bits of the digest, hex).
"""
import hashlib
import hmac
from typing import Iterable, Optional

from crocodile.errors import UserError

AUTHORIZATION_HEADER = "authorization"
BEARER = "Bearer "


def read_bytes(path: Optional[str], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UserError(f"{what} {path}: {error.strerror}") from None
    if not data.strip():
        raise UserError(f"{what} {path}: file is empty")
    return data


def read_tokens(path: Optional[str]) -> Optional[frozenset]:
    """One token per line; blank lines and lines starting with '#' are skipped."""
    data = read_bytes(path, "--auth-token-file")
    if data is None:
        return None
    tokens = frozenset(line.strip() for line in data.decode().splitlines()
                       if line.strip() and not line.strip().startswith("#"))
    if not tokens:
        raise UserError(f"--auth-token-file {path}: no token in the file")
    return tokens


class TokenCheck:
    def __init__(self, tokens: Iterable[str]):
        self._tokens = [token.encode() for token in tokens]

    def allows(self, header: Optional[str]) -> bool:
        if not header or not header.startswith(BEARER):
            return False
        given = header[len(BEARER):].strip().encode()
        return any(hmac.compare_digest(given, token) for token in self._tokens)


class UserIdHasher:
    def __init__(self, salt: bytes):
        self.key = salt.strip()  # the HMAC key (the compiled data plane hashes with it too)

    def __call__(self, user_id: str) -> str:
        return hmac.new(self.key, user_id.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:32]
