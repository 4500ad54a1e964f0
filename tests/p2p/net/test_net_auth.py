"""Run admission without a network: secrets, tags, allow-lists, identities, gather parsing.

.venv/bin/python -m pytest tests/p2p/net/test_net_auth.py -q
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

pytest.importorskip("hivemind")

from hivemind.utils.serializer import MSGPackSerializer  # noqa: E402

from speechswarm.p2p.net.auth import (  # noqa: E402
    SECRET_ENV,
    Gate,
    ensure_identity,
    load_allow_list,
    load_secret,
    member_tag,
    peer_id_of,
)
from speechswarm.p2p.net.averager import gathered_tag  # noqa: E402

SECRET = b"0123456789abcdef0123"


def test_member_tag_is_hmac_sha256_of_the_peer_id():
    expected = hmac.new(SECRET, b"speechswarm-member:" + b"\x01\x02", hashlib.sha256).digest()
    assert member_tag(SECRET, b"\x01\x02") == expected
    assert member_tag(SECRET, b"\x01\x03") != expected
    assert member_tag(b"another secret 12345", b"\x01\x02") != expected


def test_gate_secret_allow_list_and_both():
    a, b = b"peer-a", b"peer-b"
    secret = Gate(secret=SECRET)
    assert secret.closed and not Gate().closed
    assert secret.allows(a, member_tag(SECRET, a))
    assert not secret.allows(a, member_tag(SECRET, b))  # b's tag is bound to b
    assert not secret.allows(a, None) and not secret.allows(a, b"")
    allow = Gate(allowed=frozenset({a}))
    assert allow.allows(a, None) and not allow.allows(b, None)
    both = Gate(secret=SECRET, allowed=frozenset({a}))
    assert both.allows(a, member_tag(SECRET, a))
    assert not both.allows(b, member_tag(SECRET, b))  # right tag, not on the list
    assert not both.allows(a, None)  # on the list, no tag
    assert Gate().allows(b, None)  # an open run


def test_load_secret_from_file_env_and_too_short(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert load_secret() == b""
    monkeypatch.setenv(SECRET_ENV, " 0123456789abcdef0123 \n")
    assert load_secret() == SECRET
    f = tmp_path / "run.secret"
    f.write_text("fedcba9876543210fedcba\nignored\n")
    assert load_secret(str(f)) == b"fedcba9876543210fedcba"
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ValueError, match=rf"\${SECRET_ENV}.*at least 16"):
        load_secret()
    with pytest.raises(FileNotFoundError, match="--secret-file .*missing"):
        load_secret(str(tmp_path / "missing"))


def test_identity_persists_and_allow_list_reads_it(tmp_path):
    key = tmp_path / "keys" / "peer.key"
    first = ensure_identity(str(key))
    assert key.is_file() and first.startswith("12D3") or first.startswith("Qm")
    assert ensure_identity(str(key)) == first == peer_id_of(str(key))  # same key, same ID
    other = ensure_identity(str(tmp_path / "other.key"))
    assert other != first
    allow = tmp_path / "allow.txt"
    allow.write_text(f"# members\n{first}  # peer 0\n\n{other}\n")
    ids = load_allow_list(str(allow))
    from hivemind.p2p import PeerID

    assert ids == {PeerID.from_base58(first).to_bytes(), PeerID.from_base58(other).to_bytes()}


def test_bad_allow_list_and_identity_name_the_file(tmp_path):
    bad = tmp_path / "allow.txt"
    bad.write_text("not-a-peer-id!\n")
    with pytest.raises(ValueError, match=r"allow.txt:1: 'not-a-peer-id!' is not a peer ID"):
        load_allow_list(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n")
    with pytest.raises(ValueError, match="no peer IDs"):
        load_allow_list(str(empty))
    with pytest.raises(FileNotFoundError, match="--allow .*nope.txt"):
        load_allow_list(str(tmp_path / "nope.txt"))
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="--identity .*not a libp2p private key"):
        peer_id_of(str(junk))


def test_gathered_tag_reads_msgpack_and_survives_junk():
    user = MSGPackSerializer.dumps({"tag": b"\x07" * 32, "step": 4})
    raw = MSGPackSerializer.dumps([None, 0, user])
    assert gathered_tag(raw) == b"\x07" * 32
    assert gathered_tag(MSGPackSerializer.dumps([None, 0, MSGPackSerializer.dumps({"step": 1})])) is None  # fmt: skip
    assert gathered_tag(MSGPackSerializer.dumps([None, 0, MSGPackSerializer.dumps({"tag": "str"})])) is None  # fmt: skip
    assert gathered_tag(b"\xff\x00junk") is None
    assert gathered_tag(b"") is None
