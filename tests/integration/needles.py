"""What a leak looks like: the encodings a secret or a private value could take in a message or a log line."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def text_forms(raw: bytes) -> list[bytes]:
    """Return ``raw`` as hex (both cases), base64 (standard, URL-safe, unpadded) and Python's bytes repr."""
    b64 = base64.b64encode(raw)
    urlsafe = base64.urlsafe_b64encode(raw)
    return [
        raw.hex().encode(),
        raw.hex().upper().encode(),
        b64,
        b64.rstrip(b"="),
        urlsafe.rstrip(b"="),
        repr(raw)[2:-1].encode(),
    ]


def forms(raw: bytes) -> list[bytes]:
    """Return ``raw`` itself and every text form of it."""
    return [raw, *text_forms(raw)]


def windows(data: bytes, *, size: int, count: int = 3) -> list[bytes]:
    """Return up to ``count`` windows of ``size`` bytes spread over ``data``, skipping near-constant ones."""
    if len(data) <= size:
        return [data] if len(set(data)) > 2 else []
    step = max(1, (len(data) - size) // max(1, count - 1))
    found = []
    for start in range(0, len(data) - size + 1, step):
        window = data[start : start + size]
        if len(set(window)) > 2:  # a run of zeros or of 0xff would also match innocent padding
            found.append(window)
        if len(found) == count:
            break
    return found


def bit_vector_forms(bits: np.ndarray) -> list[bytes]:
    """Return needles for a 0/1 vector: bit-packed (both bit orders), one byte per value, and 16-bit lanes."""
    vector = np.asarray(bits, dtype=np.uint8).reshape(-1)
    encodings = [
        np.packbits(vector, bitorder="little").tobytes(),
        np.packbits(vector, bitorder="big").tobytes(),
    ]
    needles = [w for data in encodings for window in windows(data, size=24) for w in forms(window)]
    needles += windows(vector.tobytes(), size=96) + windows(vector.astype("<u2").tobytes(), size=192)
    return needles


def private_key_needles(path: Path) -> list[bytes]:
    """Return needles for the PEM private key in ``path``: its base64 body lines and its raw key bytes."""
    pem = path.read_bytes()
    body = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    needles = [line for line in body if len(line) >= 16] + [
        w for w in windows(der, size=24) for w in forms(w)
    ]
    if isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)):
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        needles += forms(raw)
    return needles


def found(haystacks: Iterable[bytes], needles: Iterable[bytes]) -> list[bytes]:
    """Return the needles that occur in any haystack."""
    stacks = list(haystacks)
    return [needle for needle in needles if any(needle in stack for stack in stacks)]
