"""coordinator.run without a network: who may join, the per-block sessions, resume, and hostile messages.

Participants are the real ``participant.run.ParticipantRun`` objects, talking to the real servicer over
an in-memory transport (``tests.coordinator.loopback``) that presents each one's certificate name. What
the coordinator knows of a caller is that name: these tests check that nothing else moves it.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.config import CoordinatorConfig, parse_config
from coordinator.errors import (
    MalformedMessageError,
    ModelMismatchError,
    RunClosedError,
    StaleMessageError,
    UnknownParticipantError,
)
from coordinator.events import (
    BlockAggregated,
    ParticipantsPresent,
    RunEvent,
    RunFinished,
    SessionStarted,
)
from coordinator.run import CoordinatorRun, RunSummary, WaitTask
from coordinator.servicer import CoordinatorServicer
from participant.client import WireClient
from participant.config import parse_config as parse_participant_config
from participant.run import CoordinatorLiedError, ParticipantRun
from privacy.signing import raw_public_key
from proto.fedprune.v1 import service_pb2 as pb
from tests.coordinator.loopback import Loopback, LoopbackClient, LoopbackRpcError
from tests.tiny import random_text

NAMES = ("site-a", "site-b", "site-c")
BLOCKS = 3


@pytest.fixture
def federation(tmp_path: Path, model_dir: Callable[..., Path]) -> Callable[..., CoordinatorConfig]:
    """Return a factory of coordinator configs (one state directory per ``label``) on one tiny model."""
    model = model_dir("llama", layers=BLOCKS)
    for index, name in enumerate(NAMES):
        lines = [json.dumps({"text": random_text(40, seed=10 * index + d)}) for d in range(8)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def make(label: str = "run", **run: Any) -> CoordinatorConfig:
        root = tmp_path / label
        return parse_config(
            {
                "server": {"address": "127.0.0.1:0", "await_poll_s": 0.2, "round_timeout_s": 20.0},
                "tls": {"ca": "ca.pem", "certificate": "c.pem", "private_key": "c.key"},
                "run": {
                    "model": str(model),
                    "participants": list(NAMES),
                    "method": "wanda",
                    "sparsity": 0.5,
                    "nsamples": 4,
                    "seqlen": 8,
                    **run,
                },
                "privacy": {"randomized_response": False, "record_level_dp": False},
                "output": {
                    "directory": str(root / "out"),
                    "state": str(root / "state"),
                    "signing_key": str(tmp_path / "report.key"),
                },
            }
        )

    return make


def _participant_config(coordinator: CoordinatorConfig, name: str, label: str) -> Any:
    root = coordinator.output.state.parent
    return parse_participant_config(
        {
            "coordinator": {"address": "127.0.0.1:1"},
            "tls": {"ca": "ca.pem", "certificate": f"{name}.pem", "private_key": f"{name}.key"},
            "model": {"directory": str(coordinator.run.model)},
            "data": {"calibration": str(root.parent / f"{name}.jsonl")},
            "runtime": {"device": "cpu", "state": str(root / f"state-{name}-{label}"), "progress": False},
            # These runs keep exact statistics (the coordinator's [privacy] above): the sites opt in.
            "privacy": {"require_record_level_dp": coordinator.privacy.record_level_dp},
        }
    )


class Threads:
    """Threads that record their exception (or BaseException) instead of losing it."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: dict[str, BaseException] = {}
        self.results: dict[str, Any] = {}

    def start(self, label: str, body: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.results[label] = body()
            except BaseException as error:  # noqa: BLE001 - reported by the test
                self.errors[label] = error

        thread = threading.Thread(target=run, name=label, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), f"{thread.name} still running after {timeout} s"


def _start_participants(
    threads: Threads, config: CoordinatorConfig, loopback: Loopback, **clients: Any
) -> None:
    for name in NAMES:
        client = clients.get(name) or LoopbackClient(loopback, name)
        participant = ParticipantRun(_participant_config(config, name, "p"), WireClient(client))
        threads.start(name, participant.run)


def _masks(run: CoordinatorRun) -> list[bytes]:
    return [run.state.packed_mask(block) for block in range(run.blocks)]


def _run_to_end(
    config: CoordinatorConfig, *, run: CoordinatorRun | None = None, **clients: Any
) -> tuple[CoordinatorRun, RunSummary]:
    run = run or CoordinatorRun(config)
    loopback = Loopback(CoordinatorServicer(run))
    threads = Threads()
    threads.start("coordinator", run.run)
    _start_participants(threads, config, loopback, **clients)
    threads.join()
    assert not threads.errors, threads.errors
    return run, threads.results["coordinator"]


# ---------------------------------------------------------------------- join rules
def test_join_admits_only_listed_names_with_the_base_model_and_one_identity_key_for_good(
    federation: Callable[..., CoordinatorConfig],
) -> None:
    config = federation()
    run = CoordinatorRun(config)
    key = raw_public_key(Ed25519PrivateKey.generate())
    fingerprint = run.model_fingerprint

    with pytest.raises(UnknownParticipantError, match="'outsider' is not in run.participants"):
        run.join("outsider", model_fingerprint=fingerprint, identity_key=key)
    with pytest.raises(ModelMismatchError) as mismatch:
        run.join("site-a", model_fingerprint=b"\x07" * 32, identity_key=key)
    assert ("07" * 32) in str(mismatch.value) and fingerprint.hex() in str(mismatch.value)
    with pytest.raises(MalformedMessageError, match="32 bytes"):
        run.join("site-a", model_fingerprint=fingerprint, identity_key=b"short")

    first = run.join("site-a", model_fingerprint=fingerprint, identity_key=key)
    assert run.join("site-a", model_fingerprint=fingerprint, identity_key=key) == first  # a retried Join
    other = raw_public_key(Ed25519PrivateKey.generate())
    with pytest.raises(UnknownParticipantError, match="another identity key"):
        run.join("site-a", model_fingerprint=fingerprint, identity_key=other)
    run.close()

    # The binding is durable: a restarted coordinator refuses the other key too.
    restarted = CoordinatorRun(config)
    with pytest.raises(UnknownParticipantError, match="another identity key"):
        restarted.join("site-a", model_fingerprint=fingerprint, identity_key=other)
    assert restarted.join("site-a", model_fingerprint=fingerprint, identity_key=key) == first
    restarted.close()


def test_identity_is_the_certificate_name_never_a_field_of_a_message(
    federation: Callable[..., CoordinatorConfig],
) -> None:
    run = CoordinatorRun(federation())
    servicer = Loopback(CoordinatorServicer(run))
    key = raw_public_key(Ed25519PrivateKey.generate())
    request = pb.JoinRequest(base_model_fingerprint=run.model_fingerprint, identity_public_key=key)
    reply = servicer.call("site-b", "Join", request)
    assert reply.name == "site-b" and reply.participant_id == 1
    with pytest.raises(LoopbackRpcError) as no_name:
        servicer.call(None, "Join", request)
    assert no_name.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(LoopbackRpcError) as outsider:
        servicer.call("outsider", "Join", request)
    assert outsider.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # A member asking for tasks before joining is told to join, by name.
    with pytest.raises(LoopbackRpcError) as early:
        servicer.call("site-c", "Await", pb.AwaitRequest(max_wait_ms=0))
    assert (
        early.value.code() is grpc.StatusCode.PERMISSION_DENIED and "call Join first" in early.value.details()
    )
    run.close()


def test_block_weights_are_refused_with_their_status_before_the_block_is_finished(
    federation: Callable[..., CoordinatorConfig],
) -> None:
    # A SparseGPT statistics run publishes weights, but only those of a finished block, only to members.
    run = CoordinatorRun(federation(recipe="stats", method="sparsegpt", mode="iterative"))
    servicer = Loopback(CoordinatorServicer(run))
    request = pb.BlockWeightsRequest(run_id=bytes.fromhex(run.run_id), block=0)

    def status(caller: str, block: int = 0) -> grpc.StatusCode:
        asked = pb.BlockWeightsRequest(run_id=request.run_id, block=block)
        with pytest.raises(LoopbackRpcError) as refused:
            list(servicer.call(caller, "BlockWeights", asked))
        return refused.value.code()  # type: ignore[no-any-return]

    assert status("site-a") is grpc.StatusCode.PERMISSION_DENIED  # not joined yet
    key = raw_public_key(Ed25519PrivateKey.generate())
    run.join("site-a", model_fingerprint=run.model_fingerprint, identity_key=key)
    assert status("site-a") is grpc.StatusCode.FAILED_PRECONDITION  # a member, block 0 not finished
    with pytest.raises(StaleMessageError, match="block 0 has no final weights yet"):
        run.block_weights("site-a", 0)
    assert status("site-a", BLOCKS) is grpc.StatusCode.INVALID_ARGUMENT  # no such block
    assert status("outsider") is grpc.StatusCode.PERMISSION_DENIED
    run.close()


class _DoubledWeights(LoopbackClient):
    """A coordinator that shows this site other valid weights: every published weight doubled (still finite,
    still zero wherever the block's mask prunes, so each check of the weights themselves passes)."""

    def block_weights(self, request: pb.BlockWeightsRequest, *, max_bytes: int) -> list[pb.BlockWeightsChunk]:
        from safetensors.torch import load, save

        from proto import convert

        honest = convert.block_weights_from_chunks(
            int(request.block), super().block_weights(request, max_bytes=max_bytes)
        )
        doubled = save({name: tensor * 2 for name, tensor in load(honest.data).items()})
        return convert.block_weights_to_chunks(convert.block_weights_of(int(request.block), doubled))


@pytest.mark.slow
def test_a_site_shown_other_weights_than_the_others_takes_no_part_in_the_next_block(
    federation: Callable[..., CoordinatorConfig],
) -> None:
    # The next block's session binds the digest of the weights the coordinator published; site-c fetched
    # others, so its view differs and it refuses before its keys leave; the others finish without it.
    config = federation(recipe="stats", method="sparsegpt", mode="iterative", threshold=2)
    run = CoordinatorRun(config)
    loopback = Loopback(CoordinatorServicer(run))
    threads = Threads()
    threads.start("coordinator", run.run)
    _start_participants(threads, config, loopback, **{"site-c": _DoubledWeights(loopback, "site-c")})
    threads.join()
    lied = threads.errors.pop("site-c")
    assert isinstance(lied, CoordinatorLiedError) and lied.check == "published-view", lied
    assert not threads.errors, threads.errors
    completed = run.state.completed_blocks()
    assert completed[0].contributors == 3  # site-c's input is in block 0's sum only
    assert [completed[block].contributors for block in range(1, BLOCKS)] == [2] * (BLOCKS - 1)


def test_no_session_starts_before_min_participants_joined_and_latecomers_are_refused(
    federation: Callable[..., CoordinatorConfig],
) -> None:
    config = federation(min_participants=2, threshold=2)
    run = CoordinatorRun(config)
    keys = {name: raw_public_key(Ed25519PrivateKey.generate()) for name in NAMES}
    threads = Threads()
    threads.start("coordinator", run._wait_for_participants)
    run.join("site-a", model_fingerprint=run.model_fingerprint, identity_key=keys["site-a"])
    task = run.await_task("site-a", max_wait_s=0.3).task
    assert isinstance(task, WaitTask) and task.reason == "waiting for 1 more participants"
    assert threads.threads[0].is_alive()
    run.join("site-b", model_fingerprint=run.model_fingerprint, identity_key=keys["site-b"])
    threads.join(timeout=10)
    with pytest.raises(RunClosedError, match="started without 'site-c'"):
        run.join("site-c", model_fingerprint=run.model_fingerprint, identity_key=keys["site-c"])
    run.close()


# ---------------------------------------------------------------------- one block in memory; resume
def test_at_most_one_block_is_accumulated_at_a_time_and_nothing_is_left_behind(
    federation: Callable[..., CoordinatorConfig],
) -> None:
    config = federation()
    state = config.output.state
    most = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if state.is_dir():
                open_blocks = len(list(state.glob("counts-*.u16"))) + len(list(state.glob("session-*")))
                most[0] = max(
                    most[0], len(list(state.glob("counts-*.u16"))), len(list(state.glob("session-*")))
                )
                assert open_blocks <= 2  # one block's session directory and its counts file
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run, summary = _run_to_end(config)
    done.set()
    watcher.join(5)
    assert most[0] == 1
    assert not list(state.glob("counts-*.u16")) and not list(state.glob("session-*"))
    assert summary.blocks == BLOCKS and (summary.output / "privacy_report.json").is_file()
    assert [b.contributors for b in run.state.completed_blocks().values()] == [3] * BLOCKS
    run.close()


class Crash(BaseException):
    """Stands for SIGKILL: nothing in the run catches it, nothing is cleaned up."""


def test_a_coordinator_killed_after_acknowledging_a_block_resumes_without_counting_it_twice(
    federation: Callable[..., CoordinatorConfig],
) -> None:
    clean, _ = _run_to_end(federation("clean"))
    expected = _masks(clean)
    clean.close()

    config = federation("crashed")
    first = CoordinatorRun(config)
    complete_block = first._complete_block

    def complete_then_die(block: int, *args: Any, **kwargs: Any) -> None:
        complete_block(block, *args, **kwargs)  # on disk, acknowledged ...
        if block == 0:
            raise Crash  # ... and killed before the next step

    first._complete_block = complete_then_die  # type: ignore[method-assign]
    loopback = Loopback(CoordinatorServicer(first))
    threads = Threads()
    threads.start("coordinator-1", first.run)
    _start_participants(threads, config, loopback)
    deadline = time.monotonic() + 60
    while "coordinator-1" not in threads.errors:
        assert time.monotonic() < deadline, "block 0 never completed"
        time.sleep(0.01)
    assert isinstance(threads.errors.pop("coordinator-1"), Crash)
    first.close()  # what the kill does: the process's database handle and state-directory lock are gone

    second = CoordinatorRun(config)  # same state directory: resumes at block 1
    assert second.run_id == first.run_id and sorted(second.state.completed_blocks()) == [0]
    loopback.servicer = CoordinatorServicer(second)  # the participants reconnect to the new process
    threads.start("coordinator-2", second.run)
    threads.join()
    assert not threads.errors, threads.errors
    assert _masks(second) == expected
    completed = second.state.completed_blocks()
    assert sorted(completed) == list(range(BLOCKS)) and all(b.contributors == 3 for b in completed.values())
    report = json.loads((config.output.directory / "privacy_report.json").read_text(encoding="utf-8"))
    text = json.dumps(report)
    assert text.count('"mechanism": "secure_aggregation"') == BLOCKS, "one session event per block, never two"
    second.close()


# ---------------------------------------------------------------------- events
@pytest.mark.parametrize(
    "settings",
    [{}, {"weight_scaling": True}, {"recipe": "fedspallm", "method": "sparsegpt"}],
    ids=["fedprllm", "weight-scaling", "fedspallm"],
)
def test_the_run_reports_each_step_once_it_is_durable_with_the_keep_votes_its_masks_came_from(
    federation: Callable[..., CoordinatorConfig], settings: dict[str, Any]
) -> None:
    import numpy as np
    import torch

    from coordinator.aggregation import global_mask
    from pruning.adapters import iter_prunable, qualified_name
    from pruning.layout import VoteLayout
    from pruning.model_io import load_model

    config = federation("events", **settings)
    events: list[RunEvent] = []

    def record(event: RunEvent) -> None:
        if isinstance(event, BlockAggregated):
            assert event.block in run.state.completed_blocks(), "told before the block is on disk"
        if isinstance(event, RunFinished):
            assert (
                run.state.finished and event.report.is_file() and (event.output / "sparsity.json").is_file()
            )
        events.append(event)

    run = CoordinatorRun(config, on_event=record)
    _, summary = _run_to_end(config, run=run)

    kinds = [type(event) for event in events]
    assert kinds == [ParticipantsPresent, *[SessionStarted, BlockAggregated] * BLOCKS, RunFinished]
    present, sessions, aggregated, finished = events[0], events[1:-1:2], events[2:-1:2], events[-1]
    assert isinstance(present, ParticipantsPresent) and present.names == NAMES
    assert isinstance(finished, RunFinished)
    assert (finished.output, finished.report) == (summary.output, summary.report)
    for block, session in enumerate(sessions):
        assert isinstance(session, SessionStarted)
        assert (session.block, session.blocks, session.attempt) == (block, BLOCKS, 1)
        assert sorted(session.members) == list(NAMES)

    base = load_model(config.run.model)
    weights = {qualified_name(b, n): s.weight().detach() for b, n, s in iter_prunable(base)}
    informative = False
    for block, event in enumerate(aggregated):
        assert isinstance(event, BlockAggregated)
        assert (event.block, event.blocks, sorted(event.contributors)) == (block, BLOCKS, list(NAMES))
        layout = VoteLayout.for_block(base, block)
        assert list(event.keep_votes) == list(event.global_masks) == list(layout.names)
        bits = np.unpackbits(
            np.frombuffer(run.state.packed_mask(block), dtype=np.uint8),
            bitorder="little",
            count=layout.dimension,
        )
        stored = layout.unflatten(torch.from_numpy(bits.astype(np.bool_)))
        for name, votes in event.keep_votes.items():
            assert votes.dtype == torch.int32 and int(votes.min()) >= 0 and int(votes.max()) <= len(NAMES)
            informative |= int(votes.min()) < int(votes.max())
            # The masks are the selection from exactly these sums, and they are the ones kept on disk.
            selected = global_mask(
                votes, weights[name], pattern=config.run.sparsity_pattern, group=config.run.group
            )
            assert torch.equal(event.global_masks[name], selected), name
            assert torch.equal(stored[name], selected), name
        if config.run.weight_scaling:
            # The sums the output scales by are the ones reported.
            counts = np.fromfile(run.state.counts_file(block), dtype=np.uint16)[: layout.dimension]
            flat = layout.flatten(dict(event.keep_votes), dtype=torch.int32)
            assert torch.equal(torch.from_numpy(counts.astype(np.int32)), flat)
    assert informative, "the sites' votes differ somewhere: the test would not see votes taken from elsewhere"
    run.close()


# ---------------------------------------------------------------------- hostile messages
class MeddlingClient(LoopbackClient):
    """site-a's client, which first sends a malformed or foreign variant of each message it sends."""

    def __init__(self, loopback: Loopback, name: str) -> None:
        super().__init__(loopback, name)
        self.refusals: list[tuple[str, grpc.StatusCode]] = []

    def _refused(self, what: str, method: str, request: Any, *, name: str | None = None) -> None:
        try:
            self.loopback.call(self.name if name is None else name, method, request)
        except LoopbackRpcError as error:
            self.refusals.append((what, error.code()))
            return
        raise AssertionError(f"{what} was accepted")

    def advertise_keys(self, request: pb.AdvertiseKeysRequest) -> None:
        claims_other = pb.AdvertiseKeysRequest()
        claims_other.CopyFrom(request)
        claims_other.advertisement.participant = request.advertisement.participant % 3 + 1
        self._refused("advertisement claiming another sender", "AdvertiseKeys", claims_other)
        junk = pb.AdvertiseKeysRequest()
        junk.CopyFrom(request)
        junk.advertisement.signature = b"\x00" * 3
        self._refused("advertisement with a junk signature", "AdvertiseKeys", junk)
        foreign = pb.AdvertiseKeysRequest()
        foreign.CopyFrom(request)
        foreign.session.run_id = b"\x09" * 16
        self._refused("advertisement for another run", "AdvertiseKeys", foreign)
        self._refused("advertisement from an outsider", "AdvertiseKeys", request, name="outsider")
        super().advertise_keys(request)

    def share_keys(self, request: pb.ShareKeysRequest) -> None:
        stale = pb.ShareKeysRequest()
        stale.CopyFrom(request)
        stale.session.session_id = stale.share_keys.session_id = b"\x01" * 32
        self._refused("shares for another session", "ShareKeys", stale)
        mismatched = pb.ShareKeysRequest()
        mismatched.CopyFrom(request)
        mismatched.session.session_id = b"\x01" * 32
        self._refused("shares whose envelope names another session", "ShareKeys", mismatched)
        self._refused("shares of another block", "ShareKeys", _other_block(request))
        super().share_keys(request)

    def masked_input(self, parts: Callable[[], Iterator[pb.MaskedInputPart]]) -> pb.MaskedInputReply:
        chunks_only = [part for part in parts() if part.WhichOneof("part") == "chunk"]
        self._refused("a stream without its closing digest", "MaskedInput", iter(chunks_only))
        self._refused("an empty stream", "MaskedInput", iter([]))
        self._refused(
            "a part with neither chunk nor done",
            "MaskedInput",
            iter([pb.MaskedInputPart(session=chunks_only[0].session)]),
        )
        # The whole stream again, closed by a wrong digest: rolled back, so the next stream starts over.
        wrong_digest: list[pb.MaskedInputPart] = []
        for part in parts():
            copy = pb.MaskedInputPart()
            copy.CopyFrom(part)
            if copy.WhichOneof("part") == "done":
                copy.done.digest = bytes(b ^ 0xFF for b in copy.done.digest)
            wrong_digest.append(copy)
        self._refused("a stream closed by a wrong digest", "MaskedInput", iter(wrong_digest))
        return super().masked_input(parts)

    def unmask(self, request: pb.UnmaskSubmission) -> None:
        self._refused("unmask of another block", "Unmask", _other_block(request))
        super().unmask(request)

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None:
        forged = pb.SubmitStatementRequest()
        forged.CopyFrom(request)
        forged.statement.statement = b"{not json"
        self._refused("a statement that is not JSON", "SubmitStatement", forged)
        super().submit_statement(request)


def _other_block(request: Any) -> Any:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.session.block = request.session.block + 7
    return copy


def test_malformed_foreign_and_stale_messages_are_refused_with_their_status_and_change_nothing(
    federation: Callable[..., CoordinatorConfig],
) -> None:
    clean, _ = _run_to_end(federation("clean"))
    expected = _masks(clean)
    clean.close()

    config = federation("meddled")
    run = CoordinatorRun(config)
    loopback = Loopback(CoordinatorServicer(run))
    meddler = MeddlingClient(loopback, "site-a")
    threads = Threads()
    threads.start("coordinator", run.run)
    _start_participants(threads, config, loopback, **{"site-a": meddler})
    threads.join()
    assert not threads.errors, threads.errors
    assert _masks(run) == expected  # same global masks as the untouched run: nothing was counted twice
    codes = dict(meddler.refusals)
    assert codes["advertisement claiming another sender"] is grpc.StatusCode.INVALID_ARGUMENT
    assert codes["advertisement with a junk signature"] is grpc.StatusCode.INVALID_ARGUMENT
    assert codes["advertisement for another run"] is grpc.StatusCode.FAILED_PRECONDITION
    assert codes["advertisement from an outsider"] is grpc.StatusCode.PERMISSION_DENIED
    assert codes["shares for another session"] is grpc.StatusCode.FAILED_PRECONDITION
    assert codes["shares whose envelope names another session"] is grpc.StatusCode.INVALID_ARGUMENT
    assert codes["shares of another block"] is grpc.StatusCode.FAILED_PRECONDITION
    assert codes["a stream without its closing digest"] is grpc.StatusCode.INVALID_ARGUMENT
    assert codes["an empty stream"] is grpc.StatusCode.INVALID_ARGUMENT
    assert codes["a part with neither chunk nor done"] is grpc.StatusCode.INVALID_ARGUMENT
    assert codes["a stream closed by a wrong digest"] is grpc.StatusCode.INVALID_ARGUMENT
    assert codes["unmask of another block"] is grpc.StatusCode.FAILED_PRECONDITION
    assert codes["a statement that is not JSON"] is grpc.StatusCode.INVALID_ARGUMENT
    assert len(meddler.refusals) == 4 * BLOCKS + 3 * BLOCKS + 4 * BLOCKS + BLOCKS + 1
    run.close()


# ---------------------------------------------------------------------- signed statements
class StatementMeddler(LoopbackClient):
    """site-a's client, which signs malformed statements with its own identity key before its real one."""

    def __init__(self, loopback: Loopback, name: str, identity_key_path: Path, sample_rate: float) -> None:
        super().__init__(loopback, name)
        self.identity_key_path = identity_key_path
        self.sample_rate = sample_rate
        self.answers: dict[str, grpc.StatusCode | str] = {}
        self.unbuildable: Any = None

    def _submit(self, what: str, statement: Any) -> None:
        request = pb.SubmitStatementRequest(
            statement=pb.SignedStatement(
                run_id=bytes.fromhex(statement.run_id),
                statement=statement.model_dump_json().encode(),
                signature=bytes.fromhex(statement.signature),
            )
        )
        try:
            super().submit_statement(request)
        except LoopbackRpcError as error:
            self.answers[what] = error.code()
            self.answers[what + " (details)"] = error.details()
            return
        self.answers[what] = grpc.StatusCode.OK

    def submit_statement(self, request: pb.SubmitStatementRequest) -> None:
        from privacy.ledger import Mechanism, MechanismEvent
        from privacy.signing import (
            ParticipantStatement,
            load_or_create_signing_key,
            sign_participant_statement,
        )

        key = load_or_create_signing_key(self.identity_key_path)
        honest = ParticipantStatement.model_validate_json(request.statement.statement)

        def signed(*events: MechanismEvent, size: str | None = None) -> ParticipantStatement:
            return sign_participant_statement(
                participant=self.name,
                run_id=honest.run_id,
                events=list(events),
                private_key=key,
                data_size_class=size,
            )

        gaussian = MechanismEvent(
            mechanism=Mechanism.GAUSSIAN,
            participant=self.name,
            block=0,
            count=1,
            parameters={"sample_rate": 0.1, "release": "r", "dimension": 8},
        )
        randomized = MechanismEvent(
            mechanism=Mechanism.RANDOMIZED_RESPONSE,
            participant=self.name,
            block=0,
            count=10**12,
            parameters={
                "epsilon0": math.log((2**32 - 77_794_684) / 77_794_684),
                "requested_epsilon0": 4.0,
                "threshold": 77_794_684,
                "threshold_bits": 32,
                "flip_probability": 77_794_684 / 2**32,
            },
        )
        # Every field in range, but two statistics of one release claim more than the record's unit norm.
        unbuildable = MechanismEvent(
            mechanism=Mechanism.GAUSSIAN,
            participant=self.name,
            block=1,
            count=1,
            parameters={
                "noise_multiplier": 2.0 / 0.9,
                "block_noise_multiplier": 2.0,
                "clip_share": 0.9,
                "clip_norm": 1.0,
                "sample_rate": self.sample_rate,
                "dimension": 8,
                "release": f"{self.name}/round0/block1",
                "sublayers": "mlp.down_proj",
                "shrinkage": "none",
            },
        )
        self._submit("gaussian without noise_multiplier", signed(gaussian))
        self.unbuildable = signed(unbuildable, unbuildable)
        self._submit("a statement the report cannot be built with", self.unbuildable)
        self._submit("10^12 coordinates", signed(randomized))
        self._submit("honest", honest)
        self._submit("honest again", honest)
        self._submit("another", signed(size="large"))


def test_a_statement_is_checked_against_the_report_schema_and_the_run_then_final(
    federation: Callable[..., CoordinatorConfig], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from privacy.ledger import Mechanism, MechanismEvent
    from privacy.report import PrivacyReport
    from privacy.signing import load_or_create_signing_key, sign_participant_statement

    config = federation("statements")
    run = CoordinatorRun(config)
    loopback = Loopback(CoordinatorServicer(run))
    identity_key_path = _participant_config(config, "site-a", "p").runtime.identity_key_path
    meddler = StatementMeddler(loopback, "site-a", identity_key_path, config.privacy.sample_rate)
    threads = Threads()
    threads.start("coordinator", run.run)
    _start_participants(threads, config, loopback, **{"site-a": meddler})
    threads.join()
    assert not threads.errors, threads.errors
    answers = meddler.answers
    assert answers["gaussian without noise_multiplier"] is grpc.StatusCode.INVALID_ARGUMENT
    assert "statement.events[0].parameters.noise_multiplier: is missing" in str(
        answers["gaussian without noise_multiplier (details)"]
    )
    assert answers["a statement the report cannot be built with"] is grpc.StatusCode.INVALID_ARGUMENT
    assert "statement.events[1].parameters.clip_share" in str(
        answers["a statement the report cannot be built with (details)"]
    )
    assert answers["10^12 coordinates"] is grpc.StatusCode.INVALID_ARGUMENT
    assert "statement.events[0].count" in str(answers["10^12 coordinates (details)"])
    assert answers["honest"] is grpc.StatusCode.OK
    assert answers["honest again"] is grpc.StatusCode.OK  # a retried submission is idempotent
    assert answers["another"] is grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be replaced" in str(answers["another (details)"])
    assert run.state.statements()["site-a"].data_size_class != "large"

    # A statement stored by an older coordinator, before these checks: the report leaves it out, loudly.
    bad = sign_participant_statement(
        participant="site-a",
        run_id=run.run_id,
        events=[
            MechanismEvent(
                mechanism=Mechanism.GAUSSIAN, participant="site-a", block=0, count=10**12, parameters={}
            )
        ],
        private_key=load_or_create_signing_key(identity_key_path),
    )
    run.state.save_statement(bad)
    caplog.set_level(logging.WARNING, logger="coordinator.run")
    started = time.monotonic()
    summary = run._write_outputs()
    assert time.monotonic() - started < 30
    report = PrivacyReport.from_json(summary.report.read_text(encoding="utf-8"))
    assert sorted(s.participant for s in report.participant_statements) == ["site-b", "site-c"]
    assert any(
        "statement of site-a is left out of the report" in r.getMessage()
        and "noise_multiplier" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]

    caplog.clear()
    run.state.save_statement(meddler.unbuildable)
    summary = run._write_outputs()
    report = PrivacyReport.from_json(summary.report.read_text(encoding="utf-8"))
    assert sorted(s.participant for s in report.participant_statements) == ["site-b", "site-c"]
    assert any(
        "statement of site-a is left out of the report" in r.getMessage() and "clip_share" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]

    # Every field in range, but its accountants disagree beyond the run's tolerance: the report is built
    # with the other sites' statements, without this one.
    caplog.clear()
    huge_noise = {
        "noise_multiplier": 1000.0,
        "block_noise_multiplier": 1000.0,
        "clip_share": 1.0,
        "clip_norm": 1.0,
        "sample_rate": config.privacy.sample_rate,
        "dimension": 8,
        "release": "site-a/round0/block0",
        "sublayers": "mlp.down_proj",
        "shrinkage": "none",
    }
    disagreeing = sign_participant_statement(
        participant="site-a",
        run_id=run.run_id,
        events=[
            MechanismEvent(
                mechanism=Mechanism.GAUSSIAN, participant="site-a", block=0, count=1, parameters=huge_noise
            )
        ],
        private_key=load_or_create_signing_key(identity_key_path),
    )
    run._check_statement("site-a", disagreeing)  # passes every check a submission passes
    run.state.save_statement(disagreeing)
    summary = run._write_outputs()
    report = PrivacyReport.from_json(summary.report.read_text(encoding="utf-8"))
    assert sorted(s.participant for s in report.participant_statements) == ["site-b", "site-c"]
    assert any("statement of site-a is left out of the report" in r.getMessage() for r in caplog.records)
    run.close()
