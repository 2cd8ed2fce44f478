"""Known-answer tests for the primitives secure aggregation is built on, and their bound wrappers.

Vectors are typed in from RFC 7748 (X25519), RFC 5869 (HKDF-SHA256) and NIST SP 800-38A (AES-CTR).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.errors import ProtocolAbort
from privacy.secagg import primitives
from privacy.secagg.errors import AuthenticationError, InvalidMessageError

h = bytes.fromhex


# --------------------------------------------------------------- RFC 7748
@pytest.mark.parametrize(
    ("scalar", "u", "expected"),
    [
        # RFC 7748 section 5.2, first and second test vectors
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ],
)
def test_x25519_matches_rfc7748_section_5_2(scalar: str, u: str, expected: str) -> None:
    shared = X25519PrivateKey.from_private_bytes(h(scalar)).exchange(X25519PublicKey.from_public_bytes(h(u)))
    assert shared == h(expected)


@pytest.mark.parametrize(
    ("iterations", "expected"),
    [
        (1, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
        (1000, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
    ],
)
def test_x25519_iterated_matches_rfc7748_section_5_2(iterations: int, expected: str) -> None:
    k = u = (9).to_bytes(32, "little")
    for _ in range(iterations):
        k, u = X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u)), k
    assert k == h(expected)


def test_x25519_diffie_hellman_matches_rfc7748_section_6_1() -> None:
    alice = X25519PrivateKey.from_private_bytes(
        h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = X25519PrivateKey.from_private_bytes(
        h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert primitives.raw_public(alice) == h(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert primitives.raw_public(bob) == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert primitives.x25519_shared(alice, primitives.raw_public(bob)) == shared
    assert primitives.x25519_shared(bob, primitives.raw_public(alice)) == shared


def test_small_order_peer_key_is_rejected() -> None:
    with pytest.raises(InvalidMessageError):
        primitives.x25519_shared(X25519PrivateKey.generate(), bytes(32))


# --------------------------------------------------------------- RFC 5869
def test_hkdf_sha256_matches_rfc5869_test_case_1() -> None:
    okm = primitives.hkdf_sha256(
        b"\x0b" * 22, salt=h("000102030405060708090a0b0c"), info=h("f0f1f2f3f4f5f6f7f8f9"), length=42
    )
    assert okm == h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_hkdf_sha256_matches_rfc5869_test_case_3_empty_salt_and_info() -> None:
    okm = primitives.hkdf_sha256(b"\x0b" * 22, salt=b"", info=b"", length=42)
    assert okm == h("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")


# ------------------------------------------------------------ SP 800-38A
SP800_38A_PLAINTEXT = [
    h("6bc1bee22e409f96e93d7e117393172a"),
    h("ae2d8a571e03ac9c9eb76fac45af8e51"),
    h("30c81c46a35ce411e5fbc1191a0a52ef"),
    h("f69f2445df4f9b17ad2b417be66c3710"),
]


@pytest.mark.parametrize(
    ("key", "ciphertext"),
    [
        # F.5.1 CTR-AES128.Encrypt
        (
            "2b7e151628aed2a6abf7158809cf4f3c",
            [
                "874d6191b620e3261bef6864990db6ce",
                "9806f66b7970fdff8617187bb9fffdff",
                "5ae4df3edbd5d35e5b4f09020db03eab",
                "1e031dda2fbe03d1792170a0f3009cee",
            ],
        ),
        # F.5.5 CTR-AES256.Encrypt
        (
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            [
                "601ec313775789a5b7a7f504bbf3d228",
                "f443e3ca4d62b59aca84e990cacaf5c5",
                "2b0930daa23de94ce87017ba2d84988d",
                "dfc9c58db67aada613c2dd08457941a6",
            ],
        ),
    ],
)
def test_aes_ctr_matches_sp800_38a(key: str, ciphertext: list[str]) -> None:
    # The initial counter block f0..ff carries into byte 14 after block 1: the whole 128-bit block is
    # the counter, which is what lets the mask PRG seek by setting the starting block.
    encryptor = Cipher(algorithms.AES(h(key)), modes.CTR(h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"))).encryptor()
    assert encryptor.update(b"".join(SP800_38A_PLAINTEXT)) == h("".join(ciphertext))


def test_aes_ctr_seeking_to_block_i_equals_the_tail_of_the_stream() -> None:
    key = h("2b7e151628aed2a6abf7158809cf4f3c")
    start = int("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff", 16)
    whole = (
        Cipher(algorithms.AES(key), modes.CTR(start.to_bytes(16, "big")))
        .encryptor()
        .update(b"".join(SP800_38A_PLAINTEXT))
    )
    seeked = (
        Cipher(algorithms.AES(key), modes.CTR((start + 2).to_bytes(16, "big")))
        .encryptor()
        .update(b"".join(SP800_38A_PLAINTEXT[2:]))
    )
    assert seeked == whole[32:]


# ------------------------------------------------------------ our bindings
def test_pairwise_mask_key_is_symmetric_and_bound_to_session_and_pair() -> None:
    a, b, c = (X25519PrivateKey.generate() for _ in range(3))
    session = bytes(32)
    ab = primitives.pairwise_mask_key(a, primitives.raw_public(b), session_id=session, party=1, peer=2)
    ba = primitives.pairwise_mask_key(b, primitives.raw_public(a), session_id=session, party=2, peer=1)
    assert ab == ba and len(ab) == 16
    assert ab != primitives.pairwise_mask_key(
        a, primitives.raw_public(b), session_id=b"\x01" * 32, party=1, peer=2
    )
    assert ab != primitives.pairwise_mask_key(
        a, primitives.raw_public(b), session_id=session, party=1, peer=3
    )
    assert ab != primitives.pairwise_mask_key(
        a, primitives.raw_public(c), session_id=session, party=1, peer=2
    )


def test_seal_keys_differ_by_direction() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    session = bytes(32)
    forward = primitives.seal_key(a, primitives.raw_public(b), session_id=session, sender=1, recipient=2)
    backward = primitives.seal_key(b, primitives.raw_public(a), session_id=session, sender=2, recipient=1)
    assert forward == primitives.seal_key(
        b, primitives.raw_public(a), session_id=session, sender=1, recipient=2
    )
    assert forward != backward


def test_sealer_never_repeats_a_nonce_and_tampering_aborts() -> None:
    key = bytes(range(32))
    header = primitives.seal_header(session_id=bytes(32), sender=1, recipient=2)
    sealer = primitives.Sealer(key)
    sealed = [sealer.seal(b"share", header) for _ in range(5)]
    assert len({nonce for nonce, _ in sealed}) == 5
    nonce, ciphertext = sealed[0]
    assert primitives.open_sealed(key, nonce, ciphertext, header) == b"share"
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    other_header = primitives.seal_header(session_id=bytes(32), sender=2, recipient=1)
    for args in (
        (key, nonce, flipped, header),
        (key, nonce, ciphertext, other_header),
        (key, sealed[1][0], ciphertext, header),
    ):
        with pytest.raises(AuthenticationError) as caught:
            primitives.open_sealed(*args)
        assert isinstance(caught.value, ProtocolAbort)


def test_signature_verification_raises_instead_of_returning_false() -> None:
    identity = Ed25519PrivateKey.generate()
    signature = primitives.sign(identity, b"keys")
    assert primitives.verify(identity.public_key(), signature, b"keys", what="keys") is None
    with pytest.raises(AuthenticationError, match="bad signature"):
        primitives.verify(identity.public_key(), signature, b"other keys", what="keys")
    with pytest.raises(AuthenticationError):
        primitives.verify(Ed25519PrivateKey.generate().public_key(), signature, b"keys", what="keys")
