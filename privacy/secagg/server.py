"""The coordinator's side of secure aggregation, as an explicit state machine.

    COLLECTING_KEYS --close_advertisements--> COLLECTING_SHARES --close_shares-->
    COLLECTING_MASKED_INPUT --close_masked_input--> COLLECTING_SIGNATURES --close_signatures-->
    COLLECTING_UNMASK --finalize--> FINISHED;
    fewer than `threshold` participants at any close --> ABORTED (nothing is requested or revealed)

The server relays ciphertexts it cannot open, sums packed masked inputs, and at the end learns only
the sum of the survivors' inputs. A malformed or inconsistent message is rejected alone
(InvalidMessageError) and the session goes on; in particular every revealed share is checked against
the digest its owner published at ShareKeys, so one bad unmask response is excluded, not fatal. Everything it receives is appended to `view` (masked payloads by
hash unless `record_masked_payloads`), so tests can inspect exactly what a curious coordinator holds.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import privacy.secagg.primitives as primitives
import privacy.secagg.shamir as shamir
from privacy.errors import PrivacyError
from privacy.secagg.accumulator import PackedAccumulator, UploadSpool
from privacy.secagg.errors import (
    InsufficientParticipantsError,
    InvalidAggregateError,
    InvalidMessageError,
    ShamirError,
    WrongStateError,
)
from privacy.secagg.messages import (
    ConsistencyCheck,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInputChunk,
    MaskedInputDone,
    RecordedChunk,
    Roster,
    ShareDelivery,
    ShareKeys,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    chunk_hash,
    stream_digest,
)
from privacy.secagg.parameters import SessionParameters
from privacy.secagg.prg import DEFAULT_BLOCK_BYTES, MaskApplier
from privacy.secagg.session import check_advertisement, compute_session_id

logger = logging.getLogger(__name__)

DIGEST_BYTES = 32

RecordedMessage = (
    KeyAdvertisement
    | ShareKeys
    | MaskedInputChunk
    | RecordedChunk
    | MaskedInputDone
    | SurvivorSignature
    | UnmaskResponse
)


class ServerState(enum.Enum):
    """Where the coordinator stands in one session."""

    COLLECTING_KEYS = "collecting_keys"
    COLLECTING_SHARES = "collecting_shares"
    COLLECTING_MASKED_INPUT = "collecting_masked_input"
    COLLECTING_SIGNATURES = "collecting_signatures"
    COLLECTING_UNMASK = "collecting_unmask"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of a session: per-coordinate sums of the contributors' inputs."""

    keep_votes: np.ndarray
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    bit_width: int
    signatures: tuple[SurvivorSignature, ...] = ()
    """The survivors' signatures over (session id, contributors, dropped): a transferable record."""


@dataclass
class _Stream:
    spool: UploadSpool
    hashes: list[bytes]


class SecAggServer:
    """The coordinator of one session; transport-independent, fed and drained with message objects."""

    def __init__(
        self,
        *,
        parameters: SessionParameters,
        identity_keys: Mapping[int, Ed25519PublicKey],
        workdir: str | os.PathLike[str] | None = None,
        record_masked_payloads: bool = False,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        self.parameters = parameters
        self._identity_keys = dict(identity_keys)
        self._workdir = workdir
        self._record_payloads = record_masked_payloads
        self._block_bytes = block_bytes
        self._state = ServerState.COLLECTING_KEYS
        self._view: list[RecordedMessage] = []
        self._advertisements: dict[int, KeyAdvertisement] = {}
        self._session_id: bytes | None = None
        self._shares: dict[int, ShareKeys] = {}
        self._share_holders: tuple[int, ...] = ()
        self._accumulator: PackedAccumulator | None = None
        self._streams: dict[int, _Stream] = {}
        self._completed: list[int] = []
        self._check: ConsistencyCheck | None = None
        self._signatures: dict[int, SurvivorSignature] = {}
        self._request: UnmaskRequest | None = None
        self._responses: dict[int, UnmaskResponse] = {}
        self._rejected: dict[int, str] = {}

    # ----------------------------------------------------------------- state
    @property
    def state(self) -> ServerState:
        """Return the current state."""
        return self._state

    @property
    def view(self) -> tuple[RecordedMessage, ...]:
        """Return everything the server received, in arrival order (its view of the session)."""
        return tuple(self._view)

    @property
    def session_id(self) -> bytes:
        """Return the session id (known once the advertisements were closed)."""
        if self._session_id is None:
            raise WrongStateError("the session id is known only after close_advertisements")
        return self._session_id

    @property
    def share_holders(self) -> tuple[int, ...]:
        """Return U2, the participants whose shares were relayed (empty before close_shares)."""
        return self._share_holders

    @property
    def rejected_responses(self) -> dict[int, str]:
        """Return {sender: reason} of the unmask responses excluded as malformed or inconsistent."""
        return dict(self._rejected)

    def _expect(self, state: ServerState) -> None:
        if self._state is not state:
            raise WrongStateError(f"server is {self._state.value}, expected {state.value}")

    def _check_session(self, session_id: bytes) -> None:
        if session_id != self._session_id:
            raise InvalidMessageError("message belongs to another session")

    def _require(self, count: int, what: str) -> None:
        if count < self.parameters.threshold:
            reason = f"only {count} participants {what}; threshold is {self.parameters.threshold}"
            self.abort(reason)
            raise InsufficientParticipantsError(reason)

    def abort(self, reason: str) -> None:
        """Return None after aborting the session and discarding the running sum and spools."""
        logger.warning("secure aggregation aborted: %s", reason)
        self._state = ServerState.ABORTED
        self.close()

    def close(self) -> None:
        """Return None after releasing files in the work directory (safe to call more than once)."""
        for stream in self._streams.values():
            stream.spool.close()
        self._streams = {}
        if self._accumulator is not None:
            self._accumulator.close()
            self._accumulator = None

    def __enter__(self) -> SecAggServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------- round 0: keys
    def receive_advertisement(self, advertisement: KeyAdvertisement) -> None:
        """Return None after accepting a participant's signed keys; bad signatures are rejected."""
        self._expect(ServerState.COLLECTING_KEYS)
        self._view.append(advertisement)
        if advertisement.participant in self._advertisements:
            raise InvalidMessageError(f"participant {advertisement.participant} advertised keys twice")
        try:
            check_advertisement(advertisement, parameters=self.parameters, identity_keys=self._identity_keys)
        except PrivacyError as exc:
            raise InvalidMessageError(f"rejected advertisement: {exc}") from exc
        self._advertisements[advertisement.participant] = advertisement

    def close_advertisements(self) -> Roster:
        """Return the roster U1 to broadcast; aborts if fewer than `threshold` advertised."""
        self._expect(ServerState.COLLECTING_KEYS)
        self._require(len(self._advertisements), "advertised keys")
        roster = tuple(self._advertisements[p] for p in sorted(self._advertisements))
        self._session_id = compute_session_id(self.parameters, roster)
        self._state = ServerState.COLLECTING_SHARES
        return Roster(advertisements=roster)

    # ------------------------------------------------------ round 1: shares
    def receive_shares(self, message: ShareKeys) -> None:
        """Return None after accepting a participant's envelopes (one for every other member of U1)."""
        self._expect(ServerState.COLLECTING_SHARES)
        self._view.append(message)
        self._check_session(message.session_id)
        sender = message.sender
        if sender not in self._advertisements or sender in self._shares:
            raise InvalidMessageError(f"unexpected or repeated shares from participant {sender}")
        recipients = [e.recipient for e in message.envelopes]
        if any(e.sender != sender for e in message.envelopes) or sorted(recipients) != [
            p for p in sorted(self._advertisements) if p != sender
        ]:
            raise InvalidMessageError(f"participant {sender} did not send one envelope per other participant")
        if len(message.self_seed_commitment) != DIGEST_BYTES:
            raise InvalidMessageError(f"participant {sender}'s self-seed commitment is malformed")
        holders = [d.holder for d in message.share_digests]
        if holders != sorted(self._advertisements) or any(
            len(d.self_seed_share) != DIGEST_BYTES or len(d.mask_key_share) != DIGEST_BYTES
            for d in message.share_digests
        ):
            raise InvalidMessageError(
                f"participant {sender} did not send one share digest pair per member of the roster"
            )
        self._shares[sender] = message

    def close_shares(self) -> dict[int, ShareDelivery]:
        """Return each member of U2 its envelopes from the other members; aborts below `threshold`."""
        self._expect(ServerState.COLLECTING_SHARES)
        self._require(len(self._shares), "shared keys")
        holders = tuple(sorted(self._shares))
        self._share_holders = holders
        inbox: dict[int, list[EncryptedShare]] = {p: [] for p in holders}
        for sender in holders:
            for envelope in self._shares[sender].envelopes:
                if envelope.recipient in inbox:
                    inbox[envelope.recipient].append(envelope)
        self._accumulator = PackedAccumulator(self.parameters, workdir=self._workdir)
        self._state = ServerState.COLLECTING_MASKED_INPUT
        return {
            p: ShareDelivery(session_id=self.session_id, recipient=p, envelopes=tuple(inbox[p]))
            for p in holders
        }

    # ---------------------------------------------------- round 2: streaming
    def receive_masked_chunk(self, chunk: MaskedInputChunk) -> None:
        """Return None after adding an in-order chunk of a participant's masked input to the sum."""
        self._expect(ServerState.COLLECTING_MASKED_INPUT)
        assert self._accumulator is not None
        self._view.append(
            chunk
            if self._record_payloads
            else RecordedChunk(
                session_id=chunk.session_id,
                participant=chunk.participant,
                chunk_index=chunk.chunk_index,
                payload_bytes=len(chunk.payload),
                payload_sha256=chunk_hash(chunk.chunk_index, chunk.payload),
            )
        )
        self._check_session(chunk.session_id)
        party = chunk.participant
        if party not in self._share_holders or party in self._completed:
            raise InvalidMessageError(f"no masked input expected from participant {party}")
        stream = self._streams.get(party)
        if stream is None:
            stream = self._streams[party] = _Stream(spool=UploadSpool(workdir=self._workdir), hashes=[])
        if chunk.chunk_index != len(stream.hashes):
            raise InvalidMessageError(
                f"participant {party} sent chunk {chunk.chunk_index}, expected {len(stream.hashes)}"
            )
        if chunk.chunk_index >= self.parameters.chunk_count or len(chunk.payload) != (
            self.parameters.packed_chunk_bytes(chunk.chunk_index)
        ):
            raise InvalidMessageError(f"chunk {chunk.chunk_index} of participant {party} has the wrong size")
        self._accumulator.add(chunk.chunk_index, chunk.payload)
        stream.spool.append(chunk.chunk_index, chunk.payload)
        stream.hashes.append(chunk_hash(chunk.chunk_index, chunk.payload))

    def receive_masked_done(self, done: MaskedInputDone) -> None:
        """Return None after closing a participant's stream; a bad digest rolls the stream back and raises."""
        self._expect(ServerState.COLLECTING_MASKED_INPUT)
        self._view.append(done)
        self._check_session(done.session_id)
        party = done.participant
        stream = self._streams.get(party)
        if stream is None:
            raise InvalidMessageError(f"participant {party} closed a stream it never opened")
        expected = stream_digest(session_id=self.session_id, participant=party, chunk_hashes=stream.hashes)
        if len(stream.hashes) != self.parameters.chunk_count or done.chunk_count != len(stream.hashes):
            raise InvalidMessageError(
                f"participant {party} closed its stream after {len(stream.hashes)} of "
                f"{self.parameters.chunk_count} chunks"
            )
        if done.digest != expected:
            self._roll_back(party)
            raise InvalidMessageError(f"digest of participant {party}'s stream does not match; rolled back")
        stream.spool.close()
        del self._streams[party]
        self._completed.append(party)

    def _roll_back(self, party: int) -> None:
        assert self._accumulator is not None
        stream = self._streams.pop(party)
        for chunk_index, payload in stream.spool.chunks():
            self._accumulator.add(chunk_index, payload, subtract=True)
        stream.spool.close()
        logger.info(
            "participant %d's unfinished masked input was rolled back (%d chunks)", party, len(stream.hashes)
        )

    def close_masked_input(self) -> ConsistencyCheck:
        """Return the consistency check naming survivors U3 and dropouts U2 minus U3; aborts below `threshold`.

        Streams that did not finish are subtracted out first: their owners count as dropouts.
        """
        self._expect(ServerState.COLLECTING_MASKED_INPUT)
        for party in list(self._streams):
            self._roll_back(party)
        survivors = tuple(sorted(self._completed))
        self._require(len(survivors), "completed their masked input")
        dropped = tuple(p for p in self._share_holders if p not in self._completed)
        self._check = ConsistencyCheck(session_id=self.session_id, survivors=survivors, dropped=dropped)
        self._state = ServerState.COLLECTING_SIGNATURES
        return self._check

    # --------------------------------------------- round 3: consistency check
    def receive_survivor_signature(self, signature: SurvivorSignature) -> None:
        """Return None after accepting a survivor's signature over the survivor set; a bad one is rejected alone."""
        self._expect(ServerState.COLLECTING_SIGNATURES)
        assert self._check is not None
        self._view.append(signature)
        self._check_session(signature.session_id)
        sender = signature.sender
        if sender not in self._check.survivors or sender in self._signatures:
            raise InvalidMessageError(f"unexpected or repeated survivor signature from {sender}")
        message = primitives.survivor_set_message(
            session_id=self.session_id, survivors=self._check.survivors, dropped=self._check.dropped
        )
        try:
            primitives.verify(
                self._identity_keys[sender],
                signature.signature,
                message,
                what=f"survivor set signed by participant {sender}",
            )
        except PrivacyError as exc:
            raise InvalidMessageError(f"rejected survivor signature: {exc}") from exc
        self._signatures[sender] = signature

    def close_signatures(self) -> UnmaskRequest:
        """Return the unmask request for the signers, carrying every signature; aborts below `threshold`."""
        self._expect(ServerState.COLLECTING_SIGNATURES)
        assert self._check is not None
        self._require(len(self._signatures), "signed the survivor set")
        signatures = tuple(self._signatures[p] for p in sorted(self._signatures))
        self._request = UnmaskRequest(
            session_id=self.session_id,
            survivors=self._check.survivors,
            dropped=self._check.dropped,
            signatures=signatures,
        )
        self._state = ServerState.COLLECTING_UNMASK
        return self._request

    # ------------------------------------------------------ round 4: unmask
    def receive_unmask(self, response: UnmaskResponse) -> None:
        """Return None after accepting a signer's shares: self-seed shares of survivors only, mask-key shares
        of dropouts only, each exactly once, each matching the digest its owner published.

        A response that fails any check is rejected alone (InvalidMessageError, kept in
        `rejected_responses`); the session goes on with the others.
        """
        self._expect(ServerState.COLLECTING_UNMASK)
        assert self._request is not None
        self._view.append(response)
        self._check_session(response.session_id)
        sender = response.sender
        if sender not in self._signatures or sender in self._responses:
            raise InvalidMessageError(f"unexpected or repeated unmask response from {sender}")
        try:
            self._check_unmask(response)
        except InvalidMessageError as exc:
            self._rejected[sender] = str(exc)
            logger.warning("unmask response of participant %d excluded: %s", sender, exc)
            raise
        self._responses[sender] = response

    def _check_unmask(self, response: UnmaskResponse) -> None:
        assert self._request is not None
        sender = response.sender
        seed_owners = [s.owner for s in response.self_seed_shares]
        key_owners = [s.owner for s in response.mask_key_shares]
        if sorted(seed_owners) != list(self._request.survivors) or sorted(key_owners) != list(
            self._request.dropped
        ):
            raise InvalidMessageError(f"unmask response of {sender} does not match the request")
        for kind, revealed in (
            (primitives.SELF_SEED_KIND, response.self_seed_shares),
            (primitives.MASK_KEY_KIND, response.mask_key_shares),
        ):
            for share in revealed:
                try:
                    shamir.Share.from_bytes(sender, share.value)
                except ShamirError as exc:
                    raise InvalidMessageError(
                        f"unmask response of {sender} has a malformed share of "
                        f"participant {share.owner}: {exc}"
                    ) from exc
                expected = self._share_digest(share.owner, sender, kind)
                actual = primitives.share_digest(
                    share.value, session_id=self.session_id, owner=share.owner, holder=sender, kind=kind
                )
                if actual != expected:
                    raise InvalidMessageError(
                        f"unmask response of {sender} has a share of participant "
                        f"{share.owner} that does not match the owner's commitment"
                    )

    def _share_digest(self, owner: int, holder: int, kind: bytes) -> bytes:
        for digest in self._shares[owner].share_digests:
            if digest.holder == holder:
                return digest.self_seed_share if kind == primitives.SELF_SEED_KIND else digest.mask_key_share
        raise InvalidMessageError(f"participant {holder} holds no share of participant {owner}")

    def _reconstruct(self, owner: int, *, self_seed: bool) -> bytes:
        shares: list[shamir.Share] = []
        for sender, response in self._responses.items():
            revealed = response.self_seed_shares if self_seed else response.mask_key_shares
            shares.extend(shamir.Share.from_bytes(sender, s.value) for s in revealed if s.owner == owner)
        try:
            # Every share matches its owner's digest, so an inconsistency here is the owner's own doing.
            return shamir.reconstruct(shares, threshold=self.parameters.threshold)
        except ShamirError as exc:
            raise ShamirError(f"participant {owner} dealt inconsistent shares: {exc}") from exc

    def finalize(self, *, out: np.ndarray | None = None) -> AggregateResult:
        """Return the per-coordinate sum of the survivors' inputs (`parameters.sum_dtype`), unmasked chunk by chunk.

        Reconstructs survivors' self seeds and dropouts' mask keys from at least `threshold` responses,
        removes the survivors' self masks and the survivor-dropout pairwise masks, and raises
        InvalidAggregateError if a count exceeds max_input times the number of contributors.
        """
        self._expect(ServerState.COLLECTING_UNMASK)
        assert self._request is not None and self._accumulator is not None
        self._require(len(self._responses), "answered the unmask request")
        params, request = self.parameters, self._request
        session_id = self.session_id
        try:
            subtract_keys = []
            for u in request.survivors:
                seed = self._reconstruct(u, self_seed=True)
                if primitives.self_seed_commitment(seed, session_id=session_id, party=u) != (
                    self._shares[u].self_seed_commitment
                ):
                    raise ShamirError(
                        f"reconstructed self seed of participant {u} does not match its commitment"
                    )
                subtract_keys.append(primitives.self_mask_key(seed, session_id=session_id, party=u))
            add_keys: list[bytes] = []
            for v in request.dropped:
                private = X25519PrivateKey.from_private_bytes(self._reconstruct(v, self_seed=False))
                if primitives.raw_public(private) != self._advertisements[v].mask_public_key:
                    raise ShamirError(
                        f"reconstructed mask key of participant {v} does not match its advertisement"
                    )
                for u in request.survivors:
                    key = primitives.pairwise_mask_key(
                        private,
                        self._advertisements[u].mask_public_key,
                        session_id=session_id,
                        party=v,
                        peer=u,
                    )
                    # survivor u added +mask if u < v, -mask otherwise; undo exactly that
                    (subtract_keys if u < v else add_keys).append(key)
        except ShamirError as exc:
            self.abort(f"reconstruction failed: {exc}")
            raise
        if out is None:
            out = np.empty(params.dimension, dtype=params.sum_dtype)
        if out.shape != (params.dimension,) or out.dtype != params.sum_dtype:
            raise PrivacyError(f"out must be a {params.sum_dtype} array of shape ({params.dimension},)")
        applier = MaskApplier(params.lane_dtype, block_bytes=self._block_bytes)
        low_bits = (1 << params.bit_width) - 1
        bound = params.max_input * len(request.survivors)
        invalid, first_invalid = 0, -1
        for chunk_index in range(params.chunk_count):
            count = params.chunk_length(chunk_index)
            start = chunk_index * params.chunk_coordinates
            lanes = self._accumulator.unpacked_chunk(chunk_index)[:count]
            applier.apply(lanes, first_coordinate=start, add_keys=add_keys, subtract_keys=subtract_keys)
            np.bitwise_and(lanes, low_bits, out=lanes)
            target = out[start : start + count]
            np.copyto(target, lanes, casting="unsafe")
            if count and int(lanes.max()) > bound:
                over = np.flatnonzero(lanes > bound)
                first_invalid = first_invalid if invalid else start + int(over[0])
                invalid += int(over.size)
        self.close()
        self._state = ServerState.FINISHED
        if invalid:
            raise InvalidAggregateError(
                f"{invalid} coordinates have counts above {bound} (max_input x {len(request.survivors)} "
                "contributors): some participant submitted invalid input",
                invalid_coordinates=invalid,
                first_invalid_index=first_invalid,
            )
        logger.info(
            "secure aggregation finished: %d contributors, %d dropped, %d coordinates",
            len(request.survivors),
            len(request.dropped),
            params.dimension,
        )
        return AggregateResult(
            keep_votes=out,
            contributors=request.survivors,
            dropped=request.dropped,
            bit_width=params.bit_width,
            signatures=request.signatures,
        )
