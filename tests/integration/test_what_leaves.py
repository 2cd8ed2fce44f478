"""What leaves a participant, and what reaches the logs, in a full run with the default privacy settings.

One process runs the real coordinator behind its real gRPC server (mutual TLS on loopback) and three real
participants, each on a channel with a recording client interceptor: every message a participant sends
(unary requests and every message of its streams) is kept as the bytes gRPC puts in the frame. Hooks
remember what must never leave: each block's keep-votes before and after randomized response, the token
ids and text of the calibration data, the calibration statistics (per-record contributions and the DP
release), the session secrets (X25519 private keys, self-mask seeds and keys) and the private key files.

The same run is repeated with the masks set to zero (the PRG's keystream added as nothing): there the
search finds the randomized votes in the uploads and both statistical tests reject, which shows that the
search and the tests can see a leak.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from participant.client import CoordinatorClient, RetryPolicy
from proto.fedprune.v1 import service_pb2 as pb
from proto.fedprune.v1 import service_pb2_grpc
from tests.integration.harness import Federation, make_federation
from tests.integration.needles import (
    bit_vector_forms,
    forms,
    found,
    private_key_needles,
    text_forms,
    windows,
)

pytestmark = pytest.mark.slow

ALPHA = 1e-6
"""Significance of the uniformity and independence tests: an honest run fails one once in a million."""


class Recorder(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A client interceptor that keeps every request message a channel sends, serialized."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def _keep(self, method: str, message: Any) -> None:
        with self._lock:
            self.sent.append((method, message.SerializeToString()))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._keep(details.method, request)
        return continuation(details, request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        def kept() -> Iterator[Any]:
            for message in request_iterator:
                self._keep(details.method, message)
                yield message

        return continuation(details, kept())

    intercept_stream_stream = intercept_stream_unary


class RecordingClient(CoordinatorClient):
    """The participant's real client, its channel wrapped by ``recorder``."""

    def __init__(self, *args: Any, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wire._channel = grpc.intercept_channel(self.wire._channel, recorder)
        self.wire._stub = service_pb2_grpc.CoordinatorStub(self.wire._channel)


class LogRecords(logging.Handler):
    """Every log record of the run, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclasses.dataclass
class Recording:
    federation: Federation
    sent: dict[str, list[tuple[str, bytes]]]
    votes: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]
    """(site, block) -> (keep-votes before randomized response, after it)."""
    tokens: dict[str, list[torch.Tensor]]
    statistics: list[torch.Tensor]
    secrets: list[bytes]
    log: str


def _hook(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, after: Callable[..., None]) -> None:
    """Wrap ``owner.name`` so that ``after(result, *args)`` sees every call."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        after(result, *args, **kwargs)
        return result

    monkeypatch.setattr(owner, name, wrapped)


def record_run(root: Path, *, masking: bool) -> Recording:
    """Return what the three participants of one full in-process run over gRPC sent, and their secrets."""
    import participant.run
    from coordinator.config import load_config as coordinator_config
    from coordinator.run import CoordinatorRun
    from coordinator.servicer import serve
    from participant.config import load_config as participant_config
    from participant.privacy import ParticipantPrivacy
    from participant.run import ParticipantRun
    from privacy.calibration_dp import DPStatisticAggregator
    from privacy.secagg import primitives
    from privacy.secagg.prg import MaskApplier

    federation = make_federation(root)
    federation.server = {"address": "127.0.0.1:0", "round_timeout_s": 60.0, "await_poll_s": 0.5}
    votes: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    tokens: dict[str, list[torch.Tensor]] = {}
    statistics: list[torch.Tensor] = []
    secrets: list[bytes] = []
    site_of_file = {str(path): name for name, path in federation.data.items()}
    lock = threading.Lock()

    def randomized(result: np.ndarray, privacy: Any, block: int, keep_votes: np.ndarray) -> None:
        with lock:
            votes[(privacy.name, block)] = (np.array(keep_votes, dtype=np.uint8), result.astype(np.uint8))

    def calibration(result: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        with lock:
            tokens[site_of_file[str(path)]] = list(result.windows)

    def contribution(result: Any, aggregator: Any, name: str, value: torch.Tensor, **kwargs: Any) -> None:
        with lock:
            if len(statistics) < 200:
                statistics.append(value.detach().flatten()[:64].cpu().clone())

    def released(result: torch.Tensor, aggregator: Any, name: str) -> None:
        with lock:
            statistics.append(result.detach().flatten()[:64].cpu().clone())

    def session_keys(result: Any, *args: Any, **kwargs: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        raw = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        with lock:
            secrets.extend(key.private_bytes(*raw) for key in (result.cipher_key, result.mask_key))

    def self_mask(result: bytes, seed: bytes, **kwargs: Any) -> None:
        with lock:
            secrets.extend((seed, result))

    records = LogRecords()
    root_logger = logging.getLogger()
    level = root_logger.level
    with pytest.MonkeyPatch.context() as monkeypatch:
        _hook(monkeypatch, ParticipantPrivacy, "randomize_block", randomized)
        _hook(monkeypatch, participant.run, "calibration_records", calibration)
        _hook(monkeypatch, DPStatisticAggregator, "add", contribution)
        _hook(monkeypatch, DPStatisticAggregator, "result", released)
        _hook(monkeypatch, primitives.SessionKeys, "generate", session_keys)
        _hook(monkeypatch, primitives, "self_mask_key", self_mask)
        if not masking:
            monkeypatch.setattr(MaskApplier, "apply", lambda self, lanes, **kwargs: lanes)
        root_logger.addHandler(records)
        root_logger.setLevel(logging.DEBUG)
        try:
            coordinator = CoordinatorRun(coordinator_config(federation.coordinator_config()))
            server, port, _ = serve(coordinator, address="127.0.0.1:0")
            recorders = {name: Recorder() for name in federation.names}
            with ThreadPoolExecutor(max_workers=4) as pool:
                driver = pool.submit(coordinator.run)
                sites = []
                for name in federation.names:
                    config = participant_config(federation.participant_config(name, f"127.0.0.1:{port}"))
                    client = RecordingClient(
                        config.coordinator.address,
                        config.tls,
                        call_timeout_s=10.0,
                        stream_timeout_s=60.0,
                        policy=RetryPolicy(max_backoff_s=0.5, max_retry_time_s=30.0),
                        recorder=recorders[name],
                    )
                    sites.append(pool.submit(ParticipantRun(config, client).run))
                try:
                    for site in sites:
                        site.result(timeout=180)
                    driver.result(timeout=30)
                finally:
                    coordinator.abort("the test is over")
                    server.stop(grace=None)
            coordinator.close()
        finally:
            root_logger.removeHandler(records)
            root_logger.setLevel(level)
    assert (federation.out / "privacy_report.json").is_file()
    return Recording(
        federation=federation,
        sent={name: recorder.sent for name, recorder in recorders.items()},
        votes=votes,
        tokens=tokens,
        statistics=statistics,
        secrets=secrets,
        log="\n".join(records.lines),
    )


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return record_run(tmp_path_factory.mktemp("masked"), masking=True)


@pytest.fixture(scope="module")
def unmasked(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return record_run(tmp_path_factory.mktemp("unmasked"), masking=False)


# ------------------------------------------------------------------------------------------- uploads
def uploads(recording: Recording, site: str) -> dict[int, tuple[np.ndarray, int]]:
    """Return the masked values ``site`` uploaded for each block, unpacked from Z_(2^b), with b."""
    from privacy.secagg.packing import unpack_reference

    values = {}
    for method, data in recording.sent[site]:
        if not method.endswith("/MaskedInput"):
            continue
        part = pb.MaskedInputPart.FromString(data)
        if not part.HasField("chunk"):
            continue
        assert part.chunk.chunk_index == 0  # one chunk a block: the default chunk holds a tiny block
        raw, _ = recording.votes[(site, part.session.block)]
        coordinates = raw.size
        bit_width = len(part.chunk.payload) * 8 // coordinates
        packed = np.frombuffer(part.chunk.payload, dtype=np.uint8)
        lanes = unpack_reference(packed, bit_width, coordinates).astype(np.int64)
        values[part.session.block] = (lanes, bit_width)
    return values


def statistics_of(recording: Recording) -> dict[str, float]:
    """Return the p-values of uniformity over Z_(2^b) and of independence from the votes, every upload pooled."""
    from scipy.stats import chi2_contingency, chisquare

    widths = set()
    pooled, randomized_bits, raw_bits = [], [], []
    for site in recording.federation.names:
        for block, (values, bit_width) in uploads(recording, site).items():
            raw, randomized = recording.votes[(site, block)]
            pooled.append(values)
            raw_bits.append(raw)
            randomized_bits.append(randomized)
            widths.add(bit_width)
    values = np.concatenate(pooled)
    assert values.size == 3 * 2 * recording.votes[("site-a", 0)][0].size  # every site, every block
    (bit_width,) = widths
    ring = 1 << bit_width
    counts = np.bincount(values, minlength=ring)

    def independence(bits: np.ndarray) -> float:
        table = np.zeros((2, ring), dtype=np.int64)
        np.add.at(table, (bits.astype(np.int64), values), 1)
        table = table[:, table.sum(axis=0) > 0]
        return float(chi2_contingency(table).pvalue) if table.shape[1] > 1 else 0.0

    return {
        "uniform": float(chisquare(counts).pvalue),
        "independent of the randomized votes": independence(np.concatenate(randomized_bits)),
        "independent of the votes": independence(np.concatenate(raw_bits)),
        "ring": float(ring),
    }


def test_the_masked_uploads_are_uniform_over_the_ring_and_independent_of_the_votes(masked: Recording) -> None:
    p = statistics_of(masked)
    assert p["ring"] >= 8  # Z_(2^b) with b >= 3 for three participants
    assert p["uniform"] > ALPHA, p
    assert p["independent of the randomized votes"] > ALPHA, p
    assert p["independent of the votes"] > ALPHA, p


def test_with_the_masks_set_to_zero_both_statistical_tests_reject(unmasked: Recording) -> None:
    p = statistics_of(unmasked)
    assert p["uniform"] < ALPHA, p
    assert p["independent of the randomized votes"] < ALPHA, p
    assert p["independent of the votes"] < ALPHA, p


# ------------------------------------------------------------------------------------------ plaintext
def plaintext_needles(recording: Recording, site: str) -> dict[str, list[bytes]]:
    """Return, by kind, what of ``site``'s private data must never appear in what it sends."""
    from privacy.secagg.packing import pack_reference

    kinds: dict[str, list[bytes]] = {"votes": [], "randomized votes": [], "token ids": [], "statistics": []}
    for (owner, _), (raw, randomized) in recording.votes.items():
        if owner != site:
            continue
        for kind, bits in (("votes", raw), ("randomized votes", randomized)):
            kinds[kind] += bit_vector_forms(bits)
            padded = np.zeros(-(-bits.size // 8) * 8, dtype=np.uint8)
            padded[: bits.size] = bits
            for bit_width in range(2, 9):  # as lanes of any ring the session could use
                ring = pack_reference(padded, bit_width).tobytes()
                kinds[kind] += [w for window in windows(ring, size=24) for w in forms(window)]
    for window in recording.tokens[site][:4]:
        ids = window.to(torch.int64)
        for dtype in (torch.int64, torch.int32, torch.int16):
            kinds["token ids"] += windows(
                ids.to(dtype).numpy().tobytes(), size=8 * ids.to(dtype).element_size()
            )
    text = recording.federation.data[site].read_bytes()
    kinds["token ids"] += windows(text, size=40, count=5)
    for statistic in recording.statistics:
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            data = statistic.to(dtype).view(torch.uint8).numpy().tobytes()
            kinds["statistics"] += windows(data, size=8 * statistic.to(dtype).element_size(), count=2)
    return kinds


def test_no_vote_statistic_token_id_or_secret_is_in_anything_a_participant_sends(masked: Recording) -> None:
    state = masked.federation.root
    for site in masked.federation.names:
        kinds = plaintext_needles(masked, site)
        assert all(kinds.values()), {kind: len(needles) for kind, needles in kinds.items()}
        kinds["session secrets"] = [w for secret in masked.secrets for w in forms(secret)]
        kinds["private keys"] = private_key_needles(masked.federation.pki / f"{site}.key")
        kinds["private keys"] += private_key_needles(state / f"state-{site}" / "identity_key.pem")
        messages = [data for _, data in masked.sent[site]]
        assert len(messages) > 20 and any(m for m in messages)
        for kind, needles in kinds.items():
            assert not found(messages, needles), f"{site} sent {kind}"


def test_with_the_masks_set_to_zero_the_search_finds_the_votes_in_the_uploads(unmasked: Recording) -> None:
    for site in unmasked.federation.names:
        messages = [data for _, data in unmasked.sent[site]]
        assert found(messages, plaintext_needles(unmasked, site)["randomized votes"]), site


# ------------------------------------------------------------------------------------------- secrets
def test_private_keys_are_owner_only_files(masked: Recording) -> None:
    root = masked.federation.root
    keys = [*masked.federation.pki.glob("*.key"), root / "keys" / "report.key"]
    keys += [root / f"state-{site}" / "identity_key.pem" for site in masked.federation.names]
    # The CA, the coordinator, three sites and an outsider (TLS); the report's key; three identity keys.
    assert len(keys) == 6 + 1 + 3
    for key in keys:
        assert key.stat().st_mode & 0o777 == 0o600, key


def test_the_debug_log_of_a_full_run_holds_no_key_seed_or_vote(masked: Recording) -> None:
    root = masked.federation.root
    log = masked.log.encode()
    assert "DEBUG" in masked.log and "block 2/2 complete" in masked.log  # the whole run, at debug level
    keys = [*masked.federation.pki.glob("*.key"), root / "keys" / "report.key"]
    keys += [root / f"state-{site}" / "identity_key.pem" for site in masked.federation.names]
    for key in keys:
        assert not found([log], private_key_needles(key)), key
    assert masked.secrets and not found([log], [f for secret in masked.secrets for f in text_forms(secret)])
    for (site, block), (raw, randomized) in masked.votes.items():
        for bits in (raw, randomized):
            spelled = [" ".join(str(int(v)) for v in bits[:40]), ", ".join(str(bool(v)) for v in bits[:24])]
            needles = [n for n in bit_vector_forms(bits) if n.isascii()] + [s.encode() for s in spelled]
            assert not found([log], needles), (site, block)
