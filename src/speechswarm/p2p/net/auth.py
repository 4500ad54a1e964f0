"""Who may join a run: a shared run secret, an allow-list of peer identities, or both.

    export SPEECHSWARM_RUN_SECRET=$(python -c "import secrets; print(secrets.token_hex(16))")
    speechswarm peer --config p2p-tiny --data mine.jsonl --identity peer.key
    speechswarm peer --identity peer.key --print-id   # this key's peer ID, for an allow-list

A peer's identity is its libp2p key (`--identity`, created on first use and kept, so a
restarted peer keeps its ID); libp2p's Noise/TLS handshake proves that the other side holds
the key of the peer ID it claims (`P2PContext.remote_id`). On top of that:

- **run secret**: each member's *tag* is HMAC-SHA256(secret, peer ID). It travels in the
  averaging join request and in the gathered group metadata, and in the run's DHT
  membership record (for state downloads). A stranger cannot make a tag for its own ID
  without the secret, and a copied tag is useless: it is bound to another peer's key.
  The same secret also closes the DHT: `RunSecretAuthorizer` signs every DHT request and
  response with a token only secret holders can issue (hivemind's own authorizer hook).
- **allow-list**: a file of base58 peer IDs, one per line (`#` comments): only they pass.

`Gate.allows(peer_id, tag)` is the one check every entry point uses (join requests, group
membership before any tensor is sent, state downloads). Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

SECRET_ENV = "SPEECHSWARM_RUN_SECRET"
MIN_SECRET_CHARS = 16


def load_secret(secret_file: str = "") -> bytes:
    """The run secret from `secret_file` (first line) or $SPEECHSWARM_RUN_SECRET; b"" if
    neither is set (an open run). Too-short secrets are refused: they can be guessed."""
    if secret_file:
        path = Path(secret_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"--secret-file {secret_file}: no such file; write a random line to it, e.g. "
                'python -c "import secrets; print(secrets.token_hex(16))" > run.secret'
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        text = lines[0].strip() if lines else ""
        where = f"--secret-file {secret_file}"
    else:
        text = os.environ.get(SECRET_ENV, "").strip()
        where = f"${SECRET_ENV}"
    if text and len(text) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{where}: the run secret has {len(text)} characters; use at least "
            f"{MIN_SECRET_CHARS} random ones (e.g. secrets.token_hex(16))"
        )
    return text.encode("utf-8")


def new_secret() -> str:
    """A fresh random run secret (what `speechswarm swarm` hands its peers)."""
    return secrets.token_hex(16)


def member_tag(secret: bytes, peer_id: bytes) -> bytes:
    """HMAC-SHA256(secret, peer ID bytes): proof that the holder of `peer_id` knows the secret."""
    return hmac.new(secret, b"speechswarm-member:" + peer_id, hashlib.sha256).digest()


def load_allow_list(path: str) -> frozenset[bytes]:
    """Peer IDs (raw bytes) from a file of base58 IDs, one per line; `#` starts a comment."""
    from hivemind.p2p import PeerID

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"--allow {path}: no such file; list one peer ID per line (`speechswarm peer "
            "--identity KEY --print-id` prints a key's ID)"
        )
    ids = set()
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.add(PeerID.from_base58(text).to_bytes())
        except Exception as e:  # base58 / multihash errors have many types
            raise ValueError(f"{path}:{n}: {text!r} is not a peer ID ({e})") from e
    if not ids:
        raise ValueError(f"--allow {path}: no peer IDs in the file")
    return frozenset(ids)


def peer_id_of(identity_path: str) -> str:
    """The base58 peer ID of a libp2p identity key file (hivemind's format)."""
    from hivemind.p2p import PeerID

    path = Path(identity_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--identity {identity_path}: no such key file; run the peer once with "
            "--identity to create it"
        )
    try:
        return PeerID.from_identity(path.read_bytes()).to_base58()
    except Exception as e:
        raise ValueError(f"--identity {identity_path}: not a libp2p private key ({e})") from e


def ensure_identity(identity_path: str) -> str:
    """Create the key file if it does not exist (mode 0400); return its peer ID."""
    from hivemind.p2p import P2P

    path = Path(identity_path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        P2P.generate_identity(str(path))
    return peer_id_of(identity_path)


@dataclass(frozen=True)
class Gate:
    """Admission rule of a run: the secret (b"": none) and the allow-list (empty: none).
    With neither the run is open and every peer passes."""

    secret: bytes = b""
    allowed: frozenset[bytes] = frozenset()

    @property
    def closed(self) -> bool:
        return bool(self.secret or self.allowed)

    def tag(self, peer_id: bytes) -> bytes:
        return member_tag(self.secret, peer_id) if self.secret else b""

    def allows(self, peer_id: bytes, tag: bytes | None) -> bool:
        """True if `peer_id` (authenticated by libp2p) may take part, given the tag it showed."""
        if self.allowed and peer_id not in self.allowed:
            return False
        if self.secret:
            if not isinstance(tag, bytes):
                return False
            return hmac.compare_digest(tag, member_tag(self.secret, peer_id))
        return True


# ---------------------------------------------------------------------- closing the DHT


def _token_signature(secret: bytes, public_key: bytes, expiration: str) -> bytes:
    return hmac.new(
        secret, b"speechswarm-dht:" + public_key + b"|" + expiration.encode(), hashlib.sha256
    ).digest()


def run_secret_authorizer(secret: bytes, token_minutes: float = 60.0):
    """A hivemind DHT authorizer for this secret (see `RunSecretAuthorizer`)."""
    from hivemind.proto.auth_pb2 import AccessToken
    from hivemind.utils.auth import TokenAuthorizerBase
    from hivemind.utils.crypto import RSAPrivateKey

    class RunSecretAuthorizer(TokenAuthorizerBase):
        """Access tokens that only holders of the run secret can issue: the token's signature
        is HMAC(secret, RSA public key | expiry). hivemind's TokenAuthorizerBase then signs
        each DHT request and response with the RSA key, with nonces against replay; DHT
        nodes drop requests and responses whose token does not verify."""

        def __init__(self):
            super().__init__(RSAPrivateKey())
            self._secret = secret

        async def get_token(self) -> AccessToken:
            expiry = datetime.now(timezone.utc) + timedelta(minutes=token_minutes)
            expiration = expiry.isoformat()
            public = self.local_public_key.to_bytes()
            return AccessToken(
                username="speechswarm-peer",
                public_key=public,
                expiration_time=expiration,
                signature=_token_signature(self._secret, public, expiration),
            )

        def is_token_valid(self, token: AccessToken) -> bool:
            expected = _token_signature(self._secret, token.public_key, token.expiration_time)
            if not hmac.compare_digest(expected, token.signature):
                return False
            try:
                expiry = datetime.fromisoformat(token.expiration_time)
            except ValueError:
                return False
            return expiry > datetime.now(timezone.utc)

        def does_token_need_refreshing(self, token: AccessToken) -> bool:
            expiry = datetime.fromisoformat(token.expiration_time)
            return expiry < datetime.now(timezone.utc) + timedelta(minutes=token_minutes / 4)

    return RunSecretAuthorizer()
