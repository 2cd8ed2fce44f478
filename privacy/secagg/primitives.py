"""Key agreement, key derivation, signatures and sealing: thin, bound wrappers over `cryptography`.

Every X25519 output goes through HKDF-SHA256 with the session id as salt and an `info` that binds the
protocol version, the purpose, the session id and both party ids, so a key is useful for exactly one
purpose in one session between one ordered (or, for pairwise masks, unordered) pair of participants.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privacy.secagg.errors import AuthenticationError, InvalidMessageError
from privacy.secagg.parameters import PROTOCOL_VERSION

RandomBytes = Callable[[int], bytes]
"""A source of secret random bytes; `os.urandom` except in known-answer tests."""

MASK_KEY_BYTES = 16
"""AES-128 for the mask PRG: see docs/SECURE_AGGREGATION.md, "Why AES-128 for masks"."""
SEAL_KEY_BYTES = 32
"""AES-256-GCM for share envelopes: a few hundred bytes per pair, so the wider key costs nothing."""
GCM_NONCE_BYTES = 12
SEED_BYTES = 32

_LABEL = b"fedprune/secagg/v%d/" % PROTOCOL_VERSION


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """Return `length` bytes of HKDF-SHA256 (RFC 5869) output."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def generate_x25519(random_bytes: RandomBytes = os.urandom) -> X25519PrivateKey:
    """Return a fresh X25519 private key drawn from `random_bytes` (the OS CSPRNG by default)."""
    if random_bytes is os.urandom:
        return X25519PrivateKey.generate()
    return X25519PrivateKey.from_private_bytes(random_bytes(32))


def raw_public(key: X25519PrivateKey | X25519PublicKey | Ed25519PublicKey) -> bytes:
    """Return the 32-byte raw encoding of a public key (the public half of a private key)."""
    if isinstance(key, X25519PrivateKey):
        key = key.public_key()
    return key.public_bytes_raw()


def x25519_shared(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Return the raw X25519 shared secret; raises InvalidMessageError for a low-order peer key."""
    try:
        return private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero output: small-order point
        raise InvalidMessageError("peer X25519 key is invalid or of small order") from exc


def pairwise_mask_key(
    private_key: X25519PrivateKey, peer_public: bytes, *, session_id: bytes, party: int, peer: int
) -> bytes:
    """Return the AES-128 key of the pairwise mask shared by `party` and `peer` (symmetric in the two)."""
    low, high = sorted((party, peer))
    info = _LABEL + b"pairwise-mask" + session_id + _u32(low) + _u32(high)
    return hkdf_sha256(
        x25519_shared(private_key, peer_public), salt=session_id, info=info, length=MASK_KEY_BYTES
    )


def self_mask_key(self_seed: bytes, *, session_id: bytes, party: int) -> bytes:
    """Return the AES-128 key of `party`'s self mask, derived from its 256-bit self seed."""
    info = _LABEL + b"self-mask" + session_id + _u32(party)
    return hkdf_sha256(self_seed, salt=session_id, info=info, length=MASK_KEY_BYTES)


def seal_key(
    private_key: X25519PrivateKey, peer_public: bytes, *, session_id: bytes, sender: int, recipient: int
) -> bytes:
    """Return the AES-256-GCM key for envelopes from `sender` to `recipient` (one direction only)."""
    info = _LABEL + b"share-seal" + session_id + _u32(sender) + _u32(recipient)
    return hkdf_sha256(
        x25519_shared(private_key, peer_public), salt=session_id, info=info, length=SEAL_KEY_BYTES
    )


def seal_header(*, session_id: bytes, sender: int, recipient: int) -> bytes:
    """Return the associated data of a share envelope: version, session and both ids."""
    return _LABEL + b"share-envelope" + session_id + _u32(sender) + _u32(recipient)


class Sealer:
    """AES-256-GCM under one direction-specific key with a message counter as nonce.

    Each key is fresh per session and per direction, and the counter only moves forward, so a nonce is
    never used twice under one key.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._next_counter = 0

    def seal(self, plaintext: bytes, header: bytes) -> tuple[bytes, bytes]:
        """Return (nonce, ciphertext with tag) of `plaintext`, authenticating `header`."""
        if self._next_counter >= 1 << 64:
            raise InvalidMessageError("nonce space exhausted")
        nonce = self._next_counter.to_bytes(GCM_NONCE_BYTES, "big")
        self._next_counter += 1
        return nonce, self._aead.encrypt(nonce, plaintext, header)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, header: bytes) -> bytes:
    """Return the plaintext of an envelope; raises AuthenticationError if it was tampered with."""
    if len(nonce) != GCM_NONCE_BYTES:
        raise AuthenticationError("envelope nonce has the wrong length")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, header)
    except InvalidTag as exc:
        raise AuthenticationError("share envelope failed authentication") from exc


def advertisement_message(
    *, parameters_digest: bytes, party: int, cipher_public_key: bytes, mask_public_key: bytes
) -> bytes:
    """Return the exact bytes a participant signs when advertising its two session keys."""
    return _LABEL + b"advertise-keys" + parameters_digest + _u32(party) + cipher_public_key + mask_public_key


def sign(identity_key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Return the 64-byte Ed25519 signature of `message`."""
    return identity_key.sign(message)


def verify(identity_public: Ed25519PublicKey, signature: bytes, message: bytes, *, what: str) -> None:
    """Return None if the signature verifies; raises AuthenticationError otherwise (never a bool)."""
    try:
        identity_public.verify(signature, message)
    except InvalidSignature as exc:
        raise AuthenticationError(f"bad signature on {what}") from exc


@dataclass(frozen=True)
class SessionKeys:
    """A participant's two ephemeral X25519 key pairs of one session (never leave the participant)."""

    cipher_key: X25519PrivateKey
    mask_key: X25519PrivateKey

    @classmethod
    def generate(cls, random_bytes: RandomBytes = os.urandom) -> SessionKeys:
        """Return two fresh key pairs."""
        return cls(cipher_key=generate_x25519(random_bytes), mask_key=generate_x25519(random_bytes))


def check_x25519_public(public_key: bytes, *, what: str) -> None:
    """Return None if `public_key` is a usable X25519 key; raises InvalidMessageError for a small-order one.

    A small-order point makes every shared secret all-zero, so the pairwise mask or envelope key would be
    known to everyone. Exchanging it with a throwaway scalar (a multiple of the cofactor after clamping)
    gives all-zero exactly for those points, which `cryptography` refuses with ValueError.
    """
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError as exc:
        raise InvalidMessageError(f"{what} is not a valid X25519 key or has small order") from exc


def self_seed_commitment(self_seed: bytes, *, session_id: bytes, party: int) -> bytes:
    """Return the SHA-256 commitment to `party`'s 256-bit self seed, published at ShareKeys.

    The seed is uniform over 2^256 values, so the hash hides it; it binds the seed the server later
    reconstructs from shares, as the advertised public key binds the reconstructed mask key.
    """
    return sha256(_LABEL + b"self-seed-commitment" + session_id + _u32(party) + self_seed)


def share_digest(share_value: bytes, *, session_id: bytes, owner: int, holder: int, kind: bytes) -> bytes:
    """Return the SHA-256 digest of the share of `owner`'s secret (`kind`) that `holder` holds.

    Published by the owner at ShareKeys for every holder, so a revealed share is checked on its own:
    one forged share is pinned to its sender instead of spoiling the reconstruction. Fewer than t
    shares leave at least one field element (~2^256 values) unknown, so the digests hide the secret.
    """
    return sha256(_LABEL + b"share-digest" + kind + session_id + _u32(owner) + _u32(holder) + share_value)


SELF_SEED_KIND = b"self-seed"
MASK_KEY_KIND = b"mask-key"


def survivor_set_message(*, session_id: bytes, survivors: tuple[int, ...], dropped: tuple[int, ...]) -> bytes:
    """Return the exact bytes a survivor signs in the consistency round: the session id and U3, U2 \\ U3."""
    return (
        _LABEL
        + b"survivor-set"
        + session_id
        + _u32(len(survivors))
        + b"".join(map(_u32, survivors))
        + _u32(len(dropped))
        + b"".join(map(_u32, dropped))
    )


def sha256(data: bytes) -> bytes:
    """Return the SHA-256 digest of `data`."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()
