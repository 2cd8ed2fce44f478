"""The participant's side of secure aggregation, as an explicit state machine.

    NEW --advertise_keys--> KEYS_ADVERTISED --share_keys--> KEYS_SHARED --receive_shares-->
    READY_TO_MASK --masked_chunk*--> MASKING --finish_masked_input--> MASKED_INPUT_SENT
    --sign_survivors--> SURVIVORS_SIGNED --unmask--> DONE;  any error once secrets exist --> ABORTED

Calling a method in another state raises WrongStateError (and changes nothing). Any other error once
the session keys exist aborts the session and wipes its secrets: a half-processed message must never
leave secrets behind in a state that could go on. A participant signs one survivor set per session,
answers at most one unmask request, and only for that set with at least t survivors' valid signatures
over it; in the answer it reveals for each peer either a self-seed share or a mask-key share. Its
`SessionHistory` makes it refuse a reused session context and a vector (by content) already summed over
another survivor set (by people). A check that only a deviating coordinator can fail raises a
`CoordinatorMisbehaviour`, whose `check` names it.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import privacy.secagg.primitives as primitives
import privacy.secagg.shamir as shamir
from privacy.errors import PrivacyError, ProtocolAbort
from privacy.secagg.errors import (
    ContradictoryViewError,
    ForgedRelayError,
    InconsistentViewError,
    ThresholdBypassError,
    WrongStateError,
)
from privacy.secagg.history import Identity, SessionHistory, keep_votes_digest
from privacy.secagg.messages import (
    ConsistencyCheck,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInputChunk,
    MaskedInputDone,
    RevealedShare,
    Roster,
    ShareDelivery,
    ShareDigest,
    ShareKeys,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    chunk_hash,
    decode_share_plaintext,
    encode_share_plaintext,
    stream_digest,
)
from privacy.secagg.packing import BitPacker
from privacy.secagg.parameters import SessionParameters
from privacy.secagg.prg import DEFAULT_BLOCK_BYTES, MaskApplier
from privacy.secagg.session import check_advertisement, compute_session_id

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class ClientState(enum.Enum):
    """Where a participant stands in one session."""

    NEW = "new"
    KEYS_ADVERTISED = "keys_advertised"
    KEYS_SHARED = "keys_shared"
    READY_TO_MASK = "ready_to_mask"
    MASKING = "masking"
    MASKED_INPUT_SENT = "masked_input_sent"
    SURVIVORS_SIGNED = "survivors_signed"
    DONE = "done"
    ABORTED = "aborted"


def _aborts_on_failure(
    method: Callable[Concatenate[SecAggClient, P], R],
) -> Callable[Concatenate[SecAggClient, P], R]:
    """Return `method` wrapped so that any error it raises, but WrongStateError, wipes secrets and aborts.

    Not only ProtocolAbort: a message that fails half-way (a small-order key, a malformed envelope, a
    wrong recipient) would otherwise leave the session keys and shares alive in a state that goes on.
    WrongStateError is raised before anything is touched, so it leaves the session as it was.
    """

    @functools.wraps(method)
    def wrapper(self: SecAggClient, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except WrongStateError:
            raise
        except Exception as exc:
            self._abort(f"{type(exc).__name__}: {exc}")
            raise

    return wrapper


class SecAggClient:
    """One participant of one session: holds its keys, shares and mask keys, emits plain messages."""

    def __init__(
        self,
        *,
        participant: int,
        parameters: SessionParameters,
        identity_key: Ed25519PrivateKey,
        identity_keys: Mapping[int, Ed25519PublicKey],
        history: SessionHistory,
        identity_names: Mapping[int, str] | None = None,
        random_bytes: primitives.RandomBytes = os.urandom,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        """`identity_keys` are the pinned long-term keys of every participant (SECURITY.md, "Identity
        keys"): obtained out of band, never from the coordinator alone; no two ids may share one.
        `identity_names` (a daemon: the certificate names of the run) name the people behind the ids in
        the history's survivor sets. `history` is this participant's memory across sessions
        (`SessionHistory`) and must live as long as its keep-vote vectors."""
        if participant not in parameters.participant_ids:
            raise PrivacyError(f"participant {participant} is not in the session's participant_ids")
        own = identity_keys.get(participant)
        if own is None or primitives.raw_public(own) != primitives.raw_public(identity_key.public_key()):
            raise PrivacyError(
                f"identity_keys[{participant}] is not this participant's own identity key: the "
                "pinned keys do not match (were they handed out by someone else?)"
            )
        raw_keys = [primitives.raw_public(key) for key in identity_keys.values()]
        if len(set(raw_keys)) != len(raw_keys):
            raise PrivacyError(
                "two participant ids share one identity key: one site under several ids would "
                "hold several shares of every secret"
            )
        names = dict(identity_names or {})
        self.participant = participant
        self.parameters = parameters
        self._identity_key = identity_key
        self._identity_keys = dict(identity_keys)
        self._identities: dict[int, Identity] = {
            pid: (names.get(pid, ""), primitives.raw_public(key).hex()) for pid, key in identity_keys.items()
        }
        self._random_bytes = random_bytes
        if random_bytes is not os.urandom:
            logger.warning(
                "participant %d uses an injected randomness source: known-answer tests only", participant
            )
        self._block_bytes = block_bytes
        self._history = history
        self._state = ClientState.NEW
        self._session_keys: primitives.SessionKeys | None = None
        self._roster: dict[int, KeyAdvertisement] = {}
        self._session_id: bytes | None = None
        self._self_seed: bytes | None = None
        self._held_shares: dict[int, tuple[shamir.Share, shamir.Share]] = {}
        self._share_holders: tuple[int, ...] = ()
        self._add_keys: list[bytes] = []
        self._subtract_keys: list[bytes] = []
        self._chunk_hashes: list[bytes | None] = []
        self._votes: np.ndarray | None = None
        self._votes_digest: bytes | None = None
        self._signed: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._applier: MaskApplier | None = None
        self._packer: BitPacker | None = None
        self._lanes: np.ndarray | None = None

    # ----------------------------------------------------------------- state
    @property
    def state(self) -> ClientState:
        """Return the current state."""
        return self._state

    @property
    def session_id(self) -> bytes:
        """Return the session id (known once the roster was accepted)."""
        if self._session_id is None:
            raise WrongStateError("the session id is known only after the roster was accepted")
        return self._session_id

    @property
    def share_holders(self) -> tuple[int, ...]:
        """Return U2 as this participant saw it: who sent it shares, itself included."""
        return self._share_holders

    @property
    def holds_secrets(self) -> bool:
        """Return True while any session secret (keys, self seed, shares, mask keys) is still reachable."""
        return bool(
            self._session_keys is not None
            or self._self_seed is not None
            or self._held_shares
            or self._add_keys
            or self._subtract_keys
        )

    def _expect(self, *states: ClientState) -> None:
        if self._state not in states:
            expected = " or ".join(s.value for s in states)
            raise WrongStateError(
                f"participant {self.participant} is {self._state.value}, expected {expected}"
            )

    def abort(self, reason: str) -> None:
        """Return None after wiping every secret of the session and ending it (a finished one stays done)."""
        if self._state not in (ClientState.ABORTED, ClientState.DONE):
            self._abort(reason)

    def _abort(self, reason: str) -> None:
        logger.warning("participant %d aborts the session: %s", self.participant, reason)
        self._wipe()
        self._state = ClientState.ABORTED

    def _wipe(self) -> None:
        # Drop every secret reference; Python cannot scrub memory, but nothing stays reachable.
        self._session_keys = None
        self._self_seed = None
        self._held_shares = {}
        self._add_keys = []
        self._subtract_keys = []
        self._lanes = None
        self._votes = None
        self._votes_digest = None

    def _check_session(self, session_id: bytes) -> None:
        if session_id != self._session_id:
            raise ContradictoryViewError(
                "the coordinator relayed a message of another session into this one",
                check="session-id-mismatch",
            )

    @property
    def votes_digest(self) -> bytes | None:
        """Return the content digest of the keep-vote vector bound to this session (None before `bind_votes`)."""
        return self._votes_digest

    # --------------------------------------------------------- round 0: keys
    def advertise_keys(self) -> KeyAdvertisement:
        """Return this participant's signed advertisement of two fresh X25519 public keys.

        Raises ContextReplayError (and aborts) if this participant's history already holds the session
        context.
        """
        self._expect(ClientState.NEW)
        try:
            self._history.join(self.parameters.context)
        except ProtocolAbort as exc:
            self._abort(str(exc))
            raise
        keys = primitives.SessionKeys.generate(self._random_bytes)
        cipher_public = primitives.raw_public(keys.cipher_key)
        mask_public = primitives.raw_public(keys.mask_key)
        message = primitives.advertisement_message(
            parameters_digest=self.parameters.digest(),
            party=self.participant,
            cipher_public_key=cipher_public,
            mask_public_key=mask_public,
        )
        self._session_keys = keys
        self._state = ClientState.KEYS_ADVERTISED
        return KeyAdvertisement(
            participant=self.participant,
            cipher_public_key=cipher_public,
            mask_public_key=mask_public,
            signature=primitives.sign(self._identity_key, message),
        )

    # ------------------------------------------------------ round 1: shares
    @_aborts_on_failure
    def share_keys(self, roster: Roster) -> ShareKeys:
        """Return envelopes with Shamir shares of this participant's self seed and mask key for each peer.

        Checks every advertisement's signature, that this participant's own advertisement is in the
        roster unchanged, that all keys are distinct, and that at least `threshold` participants remain.
        The server makes the same checks before it relays a roster, so every failure but equal keys
        (which a peer can cause by copying another's public keys) is a CoordinatorMisbehaviour.
        """
        self._expect(ClientState.KEYS_ADVERTISED)
        assert self._session_keys is not None
        entries: dict[int, KeyAdvertisement] = {}
        for adv in roster.advertisements:
            if adv.participant in entries:
                raise ContradictoryViewError(
                    f"roster lists participant {adv.participant} twice", check="roster-repeats-participant"
                )
            try:
                check_advertisement(adv, parameters=self.parameters, identity_keys=self._identity_keys)
            except PrivacyError as exc:
                raise ForgedRelayError(
                    f"the roster carries an advertisement the coordinator must have rejected: {exc}",
                    check="roster-advertisement-invalid",
                ) from exc
            entries[adv.participant] = adv
        own = entries.get(self.participant)
        if own is None or (own.cipher_public_key, own.mask_public_key) != (
            primitives.raw_public(self._session_keys.cipher_key),
            primitives.raw_public(self._session_keys.mask_key),
        ):
            raise ContradictoryViewError(
                "roster does not carry this participant's own keys", check="roster-own-keys"
            )
        all_keys = [k for adv in entries.values() for k in (adv.cipher_public_key, adv.mask_public_key)]
        if len(set(all_keys)) != len(all_keys):
            raise InconsistentViewError("two advertised public keys are equal")
        if len(entries) < self.parameters.threshold:
            raise ThresholdBypassError(
                f"{len(entries)} participants advertised keys, threshold is {self.parameters.threshold}",
                check="roster-below-threshold",
            )
        self._roster = dict(sorted(entries.items()))
        session_id = compute_session_id(self.parameters, self._roster.values())
        self._session_id = session_id

        self._self_seed = self._random_bytes(primitives.SEED_BYTES)
        mask_private = self._session_keys.mask_key.private_bytes_raw()
        holders = tuple(self._roster)
        t = self.parameters.threshold
        seed_shares = shamir.split(
            self._self_seed, threshold=t, holders=holders, random_bytes=self._random_bytes
        )
        key_shares = shamir.split(mask_private, threshold=t, holders=holders, random_bytes=self._random_bytes)
        self._held_shares = {self.participant: (seed_shares[self.participant], key_shares[self.participant])}
        digests = tuple(
            ShareDigest(
                holder=holder,
                self_seed_share=primitives.share_digest(
                    seed_shares[holder].y_bytes(),
                    session_id=session_id,
                    owner=self.participant,
                    holder=holder,
                    kind=primitives.SELF_SEED_KIND,
                ),
                mask_key_share=primitives.share_digest(
                    key_shares[holder].y_bytes(),
                    session_id=session_id,
                    owner=self.participant,
                    holder=holder,
                    kind=primitives.MASK_KEY_KIND,
                ),
            )
            for holder in holders
        )
        envelopes = []
        for peer, adv in self._roster.items():
            if peer == self.participant:
                continue
            key = primitives.seal_key(
                self._session_keys.cipher_key,
                adv.cipher_public_key,
                session_id=session_id,
                sender=self.participant,
                recipient=peer,
            )
            plaintext = encode_share_plaintext(
                sender=self.participant,
                recipient=peer,
                self_seed_share=seed_shares[peer],
                mask_key_share=key_shares[peer],
            )
            header = primitives.seal_header(session_id=session_id, sender=self.participant, recipient=peer)
            nonce, ciphertext = primitives.Sealer(key).seal(plaintext, header)
            envelopes.append(
                EncryptedShare(sender=self.participant, recipient=peer, nonce=nonce, ciphertext=ciphertext)
            )
        self._state = ClientState.KEYS_SHARED
        return ShareKeys(
            session_id=session_id,
            sender=self.participant,
            envelopes=tuple(envelopes),
            self_seed_commitment=primitives.self_seed_commitment(
                self._self_seed, session_id=session_id, party=self.participant
            ),
            share_digests=digests,
        )

    @_aborts_on_failure
    def receive_shares(self, delivery: ShareDelivery) -> None:
        """Return None after opening every envelope addressed to this participant and deriving its masks.

        The senders plus this participant form U2, the set every pairwise mask is computed against.
        A tampered envelope aborts the session (AuthenticationError; a peer can cause it, so it is no
        proof against the coordinator); a misaddressed, foreign or repeated envelope, or fewer than t
        holders, is a CoordinatorMisbehaviour (the server checks all of these before it relays).
        """
        self._expect(ClientState.KEYS_SHARED)
        assert self._session_keys is not None and self._self_seed is not None
        self._check_session(delivery.session_id)
        if delivery.recipient != self.participant:
            raise ContradictoryViewError(
                "share delivery is addressed to another participant", check="delivery-misaddressed"
            )
        session_id = self.session_id
        received = dict(self._held_shares)  # committed only if the whole delivery checks out
        for envelope in delivery.envelopes:
            sender = envelope.sender
            if envelope.recipient != self.participant or sender == self.participant:
                raise ContradictoryViewError(
                    "envelope is not addressed to this participant", check="delivery-misaddressed"
                )
            if sender not in self._roster:
                raise ContradictoryViewError(
                    f"envelope from participant {sender}, who is not in the roster",
                    check="delivery-foreign-sender",
                )
            if sender in received:
                raise ContradictoryViewError(
                    f"two envelopes from participant {sender}", check="delivery-repeats-sender"
                )
            key = primitives.seal_key(
                self._session_keys.cipher_key,
                self._roster[sender].cipher_public_key,
                session_id=session_id,
                sender=sender,
                recipient=self.participant,
            )
            header = primitives.seal_header(session_id=session_id, sender=sender, recipient=self.participant)
            plaintext = primitives.open_sealed(key, envelope.nonce, envelope.ciphertext, header)
            received[sender] = decode_share_plaintext(plaintext, sender=sender, recipient=self.participant)
        holders = tuple(sorted(received))
        if len(holders) < self.parameters.threshold:
            raise ThresholdBypassError(
                f"{len(holders)} participants shared keys, threshold is {self.parameters.threshold}",
                check="delivery-below-threshold",
            )
        self._held_shares = received
        self._share_holders = holders
        self._add_keys = [
            primitives.self_mask_key(self._self_seed, session_id=session_id, party=self.participant)
        ]
        self._subtract_keys = []
        for peer in holders:
            if peer == self.participant:
                continue
            pairwise = primitives.pairwise_mask_key(
                self._session_keys.mask_key,
                self._roster[peer].mask_public_key,
                session_id=session_id,
                party=self.participant,
                peer=peer,
            )
            (self._add_keys if self.participant < peer else self._subtract_keys).append(pairwise)
        # The cipher key has done its job; the mask key's shares are out, the key itself is no longer needed.
        self._session_keys = None
        self._chunk_hashes = [None] * self.parameters.chunk_count
        self._state = ClientState.READY_TO_MASK

    # ----------------------------------------------------- round 2: masking
    @_aborts_on_failure
    def bind_votes(self, keep_votes: np.ndarray) -> bytes:
        """Return the content digest of `keep_votes` after binding it as the one vector this session masks.

        Checks the shape and that every value lies in [0, max_input]. The digest (`keep_votes_digest`)
        depends on the values alone, not on this session's chunking, ring or `max_input`: it is what the
        history recognises the vector by. Binding the same vector again is a no-op; another vector aborts
        (two maskings under one mask would reveal the difference of the two vectors).
        """
        self._expect(
            ClientState.NEW,
            ClientState.KEYS_ADVERTISED,
            ClientState.KEYS_SHARED,
            ClientState.READY_TO_MASK,
            ClientState.MASKING,
        )
        votes = np.asarray(keep_votes)
        if self._votes is not None and (
            votes is self._votes or (votes.shape == self._votes.shape and np.array_equal(votes, self._votes))
        ):
            assert self._votes_digest is not None
            return self._votes_digest
        if self._votes is not None:
            raise PrivacyError("this session's masked input was bound to other keep_votes")
        params = self.parameters
        if votes.shape != (params.dimension,):
            raise PrivacyError(f"keep_votes must have shape ({params.dimension},), got {votes.shape}")
        largest = None
        if votes.dtype != np.bool_:
            if votes.dtype.kind not in "iu":
                raise PrivacyError("keep_votes must be integers or booleans")
            largest = int(votes.max())
            if largest > params.max_input or (votes.dtype.kind == "i" and votes.min() < 0):
                raise PrivacyError(f"keep_votes must lie in [0, {params.max_input}]")
        # The digest of the plain votes identifies the vector across sessions (SessionHistory); it never
        # leaves the participant.
        self._votes_digest = keep_votes_digest(votes, largest=largest)
        self._votes = votes
        return self._votes_digest

    @_aborts_on_failure
    def masked_chunk(self, chunk_index: int) -> MaskedInputChunk:
        """Return chunk `chunk_index` of y = votes + self mask +/- pairwise masks (mod 2^b), packed.

        The votes are those bound by `bind_votes` (`masked_input` binds them). A chunk can be regenerated
        (to resume a stream) without touching other chunks, and always from the one bound vector.
        """
        self._expect(ClientState.READY_TO_MASK, ClientState.MASKING)
        if self._votes is None:
            raise WrongStateError("no keep_votes bound to this session: call bind_votes or masked_input")
        params = self.parameters
        if self._lanes is None or self._applier is None or self._packer is None:
            # O(chunk) working buffers, allocated when masking starts and freed when the stream is closed
            self._applier = MaskApplier(params.lane_dtype, block_bytes=self._block_bytes)
            self._packer = BitPacker(params.bit_width, params.chunk_coordinates)
            self._lanes = np.zeros(params.chunk_coordinates, dtype=params.lane_dtype)
        count = params.chunk_length(chunk_index)
        start = chunk_index * params.chunk_coordinates
        padded = -(-count // 8) * 8
        lanes = self._lanes[:padded]
        np.copyto(lanes[:count], self._votes[start : start + count], casting="unsafe")
        lanes[count:] = 0
        self._applier.apply(
            lanes[:count], first_coordinate=start, add_keys=self._add_keys, subtract_keys=self._subtract_keys
        )
        payload = self._packer.pack(lanes).tobytes()
        leaf = chunk_hash(chunk_index, payload)
        previous = self._chunk_hashes[chunk_index]
        if previous is not None and previous != leaf:
            raise PrivacyError(f"chunk {chunk_index} was regenerated with a different payload")
        self._chunk_hashes[chunk_index] = leaf
        self._state = ClientState.MASKING
        return MaskedInputChunk(
            session_id=self.session_id, participant=self.participant, chunk_index=chunk_index, payload=payload
        )

    @_aborts_on_failure
    def finish_masked_input(self) -> MaskedInputDone:
        """Return the message that closes the masked-input stream (every chunk must have been made)."""
        self._expect(ClientState.MASKING)
        missing = [i for i, leaf in enumerate(self._chunk_hashes) if leaf is None]
        if missing:
            raise WrongStateError(f"chunks {missing[:5]} of the masked input were never generated")
        hashes = [leaf for leaf in self._chunk_hashes if leaf is not None]
        self._state = ClientState.MASKED_INPUT_SENT
        self._lanes = self._applier = self._packer = None  # O(chunk) buffers are no longer needed
        self._votes = None  # the digest stays: it is what the survivor set is agreed for
        return MaskedInputDone(
            session_id=self.session_id,
            participant=self.participant,
            chunk_count=len(hashes),
            digest=stream_digest(
                session_id=self.session_id, participant=self.participant, chunk_hashes=hashes
            ),
        )

    def masked_input(
        self,
        keep_votes: np.ndarray,
        *,
        start_chunk: int = 0,
    ) -> Iterator[MaskedInputChunk | MaskedInputDone]:
        """Return an iterator over the whole masked-input stream of `keep_votes`, then its closing message.

        `start_chunk` resumes a stream: chunks before it must have been generated earlier.
        """
        self.bind_votes(keep_votes)
        for index in range(start_chunk, self.parameters.chunk_count):
            yield self.masked_chunk(index)
        yield self.finish_masked_input()

    # ------------------------------------------- round 3: consistency check
    @_aborts_on_failure
    def sign_survivors(self, check: ConsistencyCheck) -> SurvivorSignature:
        """Return this participant's signature over the session id and the survivor set of `check`.

        Aborts (and signs nothing) unless survivors and dropouts are disjoint, together equal U2, include
        this participant, number at least `threshold` (each a CoordinatorMisbehaviour: the server's own
        check is built that way), and this participant's history has not summed the same keep-votes (by
        content) over another survivor set (by people): ReplayError. Signs once per session.
        """
        self._expect(ClientState.MASKED_INPUT_SENT)
        self._check_session(check.session_id)
        survivors, dropped = set(check.survivors), set(check.dropped)
        if len(survivors) != len(check.survivors) or len(dropped) != len(check.dropped):
            raise ContradictoryViewError("survivor set lists a participant twice", check="survivors-repeat")
        if survivors & dropped:
            raise ContradictoryViewError(
                f"survivor set names participants both survived and dropped: {sorted(survivors & dropped)}",
                check="survivors-and-dropped",
            )
        if survivors | dropped != set(self._share_holders):
            raise ContradictoryViewError(
                "survivors and dropouts are not the set of participants that shared keys",
                check="survivors-not-share-holders",
            )
        if self.participant not in survivors:
            raise ContradictoryViewError(
                "survivor set says this participant dropped", check="survivors-omit-self"
            )
        if len(survivors) < self.parameters.threshold:
            raise ThresholdBypassError(
                f"{len(survivors)} survivors, threshold is {self.parameters.threshold}",
                check="survivors-below-threshold",
            )
        signed = (tuple(sorted(survivors)), tuple(sorted(dropped)))
        assert self._votes_digest is not None
        # Recorded before the signature leaves: a crash after signing errs on the side of refusing.
        self._history.agree(
            votes_digest=self._votes_digest, survivors=tuple(self._identities[p] for p in signed[0])
        )
        self._signed = signed
        self._state = ClientState.SURVIVORS_SIGNED
        message = primitives.survivor_set_message(
            session_id=self.session_id, survivors=signed[0], dropped=signed[1]
        )
        return SurvivorSignature(
            session_id=self.session_id,
            sender=self.participant,
            signature=primitives.sign(self._identity_key, message),
        )

    # ------------------------------------------------------ round 4: unmask
    @_aborts_on_failure
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Return, for every peer in U2, its self-seed share if it survived or its mask-key share if it dropped.

        Aborts (and reveals nothing) unless the request names exactly the survivor set this participant
        signed and carries valid signatures over it from at least `threshold` distinct survivors. With
        t > (n + c)/2 two different sets cannot both gather t signatures, so every honest participant
        that answers agrees on one set. Answers once per session.
        """
        self._expect(ClientState.SURVIVORS_SIGNED)
        self._check_session(request.session_id)
        assert self._signed is not None
        survivors, dropped = self._signed
        if (tuple(request.survivors), tuple(request.dropped)) != (survivors, dropped):
            raise ContradictoryViewError(
                "unmask request names another survivor set than the one this participant signed",
                check="unmask-other-survivor-set",
            )
        message = primitives.survivor_set_message(
            session_id=self.session_id, survivors=survivors, dropped=dropped
        )
        signers: set[int] = set()
        for signature in request.signatures:
            if signature.session_id != self.session_id:
                raise ContradictoryViewError(
                    "a survivor signature belongs to another session", check="unmask-foreign-signature"
                )
            if signature.sender not in survivors or signature.sender in signers:
                raise ContradictoryViewError(
                    f"signature of participant {signature.sender} is unexpected or repeated",
                    check="unmask-foreign-signature",
                )
            try:
                primitives.verify(
                    self._identity_keys[signature.sender],
                    signature.signature,
                    message,
                    what=f"survivor set signed by participant {signature.sender}",
                )
            except PrivacyError as exc:
                raise ForgedRelayError(
                    f"the coordinator relayed a survivor signature it must have rejected: {exc}",
                    check="unmask-bad-signature",
                ) from exc
            signers.add(signature.sender)
        if len(signers) < self.parameters.threshold:
            raise ThresholdBypassError(
                f"{len(signers)} survivors signed the survivor set, threshold is {self.parameters.threshold}",
                check="unmask-below-threshold",
            )
        seed_shares = tuple(
            RevealedShare(owner=v, value=self._held_shares[v][0].y_bytes()) for v in survivors
        )
        key_shares = tuple(RevealedShare(owner=v, value=self._held_shares[v][1].y_bytes()) for v in dropped)
        self._wipe()
        self._state = ClientState.DONE
        return UnmaskResponse(
            session_id=self.session_id,
            sender=self.participant,
            self_seed_shares=seed_shares,
            mask_key_shares=key_shares,
        )
