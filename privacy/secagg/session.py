"""Session identity: the session id and the checks both roles apply to advertised keys."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from privacy.secagg.errors import InvalidMessageError
from privacy.secagg.messages import KeyAdvertisement
from privacy.secagg.parameters import PROTOCOL_VERSION, SessionParameters
from privacy.secagg.primitives import advertisement_message, check_x25519_public, verify

_SESSION_LABEL = b"fedprune/secagg/v%d/session" % PROTOCOL_VERSION
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def compute_session_id(parameters: SessionParameters, advertisements: Iterable[KeyAdvertisement]) -> bytes:
    """Return SHA-256 over the parameters' digest and every advertised key, in participant order."""
    h = hashlib.sha256(_SESSION_LABEL + parameters.digest())
    ordered = sorted(advertisements, key=lambda adv: adv.participant)
    h.update(struct.pack(">I", len(ordered)))
    for adv in ordered:
        h.update(struct.pack(">I", adv.participant) + adv.cipher_public_key + adv.mask_public_key)
    return h.digest()


def check_advertisement(
    advertisement: KeyAdvertisement,
    *,
    parameters: SessionParameters,
    identity_keys: Mapping[int, Ed25519PublicKey],
) -> None:
    """Return None if the advertisement is well formed and signed by its participant; raises otherwise.

    A bad signature raises AuthenticationError (an abort where a participant checks the roster); a
    malformed message or a small-order X25519 key raises InvalidMessageError, so such keys never reach
    the roster.
    """
    party = advertisement.participant
    if party not in parameters.participant_ids:
        raise InvalidMessageError(f"participant {party} is not part of this session")
    if party not in identity_keys:
        raise InvalidMessageError(f"no identity key known for participant {party}")
    if (
        len(advertisement.cipher_public_key) != PUBLIC_KEY_BYTES
        or len(advertisement.mask_public_key) != PUBLIC_KEY_BYTES
        or len(advertisement.signature) != SIGNATURE_BYTES
    ):
        raise InvalidMessageError(f"advertisement of participant {party} has malformed keys or signature")
    if advertisement.cipher_public_key == advertisement.mask_public_key:
        raise InvalidMessageError(f"participant {party} advertised the same key twice")
    check_x25519_public(advertisement.cipher_public_key, what=f"cipher key of participant {party}")
    check_x25519_public(advertisement.mask_public_key, what=f"mask key of participant {party}")
    message = advertisement_message(
        parameters_digest=parameters.digest(),
        party=party,
        cipher_public_key=advertisement.cipher_public_key,
        mask_public_key=advertisement.mask_public_key,
    )
    verify(identity_keys[party], advertisement.signature, message, what=f"keys of participant {party}")
