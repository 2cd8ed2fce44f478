"""Faults on real processes: sites killed or hung at each stage, a coordinator killed at each stage, a cut link.

Each run either completes with, block by block, the global mask of a plain vote sum over exactly the sites
whose masked input was summed (computed here in one process from each site's own one-shot votes), or stops
with an error that names the stage and the missing sites. After every fault the coordinator's state
directory passes SQLite's integrity check and every finished block's mask file matches its recorded digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

from privacy.secagg import SessionHistory
from tests.integration.harness import (
    NSAMPLES,
    SEQLEN,
    Federation,
    Process,
    make_federation,
    start_coordinator,
    start_participant,
)
from tests.integration.needles import bit_vector_forms, found, private_key_needles
from tests.integration.test_service_run import _pruned_masks

pytestmark = pytest.mark.slow

FIVE = ("site-a", "site-b", "site-c", "site-d", "site-e")
# What the coordinator's drop warning calls each stage at which a site can fail.
PHASE_OF_STAGE = {
    "advertise": "advertise keys",
    "share": "share keys",
    "mid-stream": "masked input",
    "sign": "sign survivors",
    "unmask": "unmask",
}


# ---------------------------------------------------------------------------------------- references
def site_votes(federation: Federation) -> dict[str, dict[str, torch.Tensor]]:
    """Return each site's own one-shot keep-votes (0/1 per weight), computed here without any service code."""
    import copy

    from participant.voting import one_shot_votes
    from pruning.data import calibration_samples
    from pruning.masks import SparsityPattern
    from pruning.methods import Method
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size

    base = load_model(federation.model)
    tokenizer = load_tokenizer(federation.model)
    votes: dict[str, dict[str, torch.Tensor]] = {}
    for name in federation.names:
        samples = calibration_samples(
            federation.data[name],
            tokenizer,
            nsamples=NSAMPLES,
            seqlen=SEQLEN,
            seed=0,
            vocab_size=vocabulary_size(base),
        )
        own: dict[str, torch.Tensor] = {}
        one_shot_votes(
            copy.deepcopy(base),
            samples,
            method=Method.WANDA,
            pattern=SparsityPattern(sparsity=0.5),
            device=torch.device("cpu"),
            on_votes=own.__setitem__,
        )
        votes[name] = own
    return votes


def expected_masks(
    federation: Federation, votes: dict[str, dict[str, torch.Tensor]], contributors: dict[int, Iterable[str]]
) -> dict[str, torch.Tensor]:
    """Return every matrix's global mask from the vote sum over ``contributors[block]``."""
    from coordinator.aggregation import global_mask
    from pruning.adapters import iter_prunable, qualified_name
    from pruning.masks import SparsityPattern
    from pruning.model_io import load_model

    masks = {}
    for block, name, sublayer in iter_prunable(load_model(federation.model)):
        key = qualified_name(block, name)
        summed = sum(votes[site][key].to(torch.int64) for site in contributors[block])
        assert isinstance(summed, torch.Tensor)
        masks[key] = global_mask(summed, sublayer.weight(), pattern=SparsityPattern(sparsity=0.5))
    return masks


def assert_masks(federation: Federation, expected: dict[str, torch.Tensor]) -> None:
    service = _pruned_masks(federation.out)
    assert service.keys() == expected.keys()
    for key in service:
        assert torch.equal(service[key], expected[key]), key


def assert_state_sound(state: Path) -> set[int]:
    """Return the finished blocks after checking the state database and every finished block's mask file."""
    database = sqlite3.connect(f"file:{state / 'run.sqlite3'}?mode=ro", uri=True)
    try:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = database.execute("SELECT block, mask_digest FROM blocks").fetchall()
    finally:
        database.close()
    for block, digest in rows:
        mask = state / "masks" / f"block-{block:05d}.bits"
        assert hashlib.sha256(mask.read_bytes()).digest() == bytes(digest), mask
    return {int(block) for block, _ in rows}


def assert_site_state_sound(state: Path) -> None:
    """Check what a site keeps across restarts: its session history parses, its release markers are whole."""
    for history in state.glob("session-history-*.json"):
        # What the site itself would read back after a restart: a torn or half-written file fails here.
        SessionHistory.restore(json.loads(history.read_text(encoding="utf-8")))
    for marker in state.glob("released-*"):
        assert marker.read_text(encoding="utf-8").endswith("\n"), marker


def process_state(process: Process) -> str:
    """Return the one-letter state of a running process (``T``: stopped)."""
    stat = Path(f"/proc/{process.popen.pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


# ------------------------------------------------------------------------------------ sites failing
def contributors_under(faults: dict[str, str], names: Iterable[str], blocks: int) -> dict[int, list[str]]:
    """Return the sites whose masked input each block sums, given where each faulty site fails."""
    summed: dict[int, list[str]] = {}
    for block in range(blocks):
        summed[block] = []
        for name in names:
            if name not in faults:
                summed[block].append(name)
                continue
            stage, at, *_ = faults[name].split(":")
            # After its masked input was summed, a site that fails is still in that block's sum.
            if block < int(at) or (block == int(at) and stage in ("sign", "unmask")):
                summed[block].append(name)
    return summed


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"site-d": "advertise:0", "site-e": "share:1"}, id="killed-advertise-then-share"),
        pytest.param({"site-d": "mid-stream:0", "site-e": "sign:1"}, id="killed-mid-stream-then-sign"),
        pytest.param({"site-d": "unmask:0", "site-e": "mid-stream:1:STOP"}, id="killed-unmask-then-hung"),
    ],
)
def test_two_of_five_sites_failing_in_different_blocks_leave_the_mask_of_the_survivors(
    tmp_path: Path, faults: dict[str, str]
) -> None:
    federation = make_federation(tmp_path / "fed", layers=3, names=FIVE)
    # t = 3 of 5, the lowest safe threshold; 1024 coordinates a chunk: nine chunks a block, so a stream
    # can be cut after its first one.
    federation.run = {"threshold": 3, "chunk_coordinates": 1024}
    federation.server = {"round_timeout_s": 3.0}
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    coordinator, address = start_coordinator(federation)
    sites = {name: start_participant(federation, name, address, fault=faults.get(name)) for name in FIVE}
    try:
        for name in FIVE:
            if name in faults:
                continue
            assert sites[name].wait(timeout=90) == 0, sites[name].output()
        assert coordinator.wait(timeout=30) == 0, coordinator.output()
        for name, fault in faults.items():
            if fault.endswith(":STOP"):
                assert process_state(sites[name]) == "T", sites[name].output()
            else:
                assert sites[name].wait(timeout=10) == -9, sites[name].output()
        log = coordinator.output()
    finally:
        for process in (coordinator, *sites.values()):
            process.stop()
    for name, fault in faults.items():
        stage, block, *_ = fault.split(":")
        assert f"block {block}: {name} dropped out (no {PHASE_OF_STAGE[stage]})" in log, log
    summed = contributors_under(faults, FIVE, 3)
    for block in range(3):
        assert f"block {block + 1}/3 complete: {len(summed[block])} contributors" in log, log
    assert assert_state_sound(federation.root / "state") == {0, 1, 2}
    for name in FIVE:
        assert_site_state_sound(federation.root / f"state-{name}")
    assert_masks(federation, expected_masks(federation, site_votes(federation), summed))


def test_below_the_threshold_the_run_stops_naming_the_stage_and_the_missing_site(tmp_path: Path) -> None:
    federation = make_federation(tmp_path / "fed")  # three sites, t = 3 (the default for three)
    federation.server = {"round_timeout_s": 3.0}
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    coordinator, address = start_coordinator(federation)
    faults = {"site-c": "share:0"}
    sites = {
        name: start_participant(federation, name, address, fault=faults.get(name))
        for name in federation.names
    }
    try:
        assert coordinator.wait(timeout=90) == 1, coordinator.output()
        for name in ("site-a", "site-b"):
            assert sites[name].wait(timeout=30) == 1, sites[name].output()
            assert "the coordinator aborted the run" in sites[name].output()
            assert "site-c" in sites[name].output() and "share keys" in sites[name].output()
        log = coordinator.output()
    finally:
        for process in (coordinator, *sites.values()):
            process.stop()
    error = next(line for line in log.splitlines() if line.startswith("fedprune coordinator: error:"))
    assert "site-c" in error and "share keys" in error and "block 0" in error, error
    assert assert_state_sound(federation.root / "state") == set()
    assert not (federation.out / "privacy_report.json").exists()


# -------------------------------------------------------------------------- the coordinator failing
def test_a_coordinator_killed_in_every_stage_and_restarted_each_time_ends_as_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    kills = ("advertise:0", "share:1", "mid-stream:2", "sign:3", "unmask:4")
    federation = make_federation(tmp_path / "fed", layers=len(kills))
    federation.run = {"chunk_coordinates": 1024}
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    processes: list[Process] = []
    try:
        coordinator, address = start_coordinator(federation, "coordinator-0", kill_at=kills[0])
        processes.append(coordinator)
        sites = [start_participant(federation, name, address) for name in federation.names]
        processes += sites
        for attempt, kill in enumerate(kills):
            stage, block = kill.split(":")
            assert coordinator.wait(timeout=90) == -9, coordinator.output()
            assert f"block {block}: first {stage} answer accepted; killing" in coordinator.output()
            if attempt > 1:  # started after the kill in block attempt - 1
                assert f"resuming: blocks {list(range(attempt - 1))}" in coordinator.output()
            # Killed in the middle of block ``block``: the earlier blocks are on disk, that one is not.
            assert assert_state_sound(federation.root / "state") == set(range(int(block)))
            following = kills[attempt + 1] if attempt + 1 < len(kills) else None
            coordinator, _ = start_coordinator(federation, f"coordinator-{attempt + 1}", kill_at=following)
            processes.append(coordinator)
        assert coordinator.wait(timeout=90) == 0, coordinator.output()
        assert "resuming: blocks [0, 1, 2, 3]" in coordinator.output()
        assert f"block {len(kills)}/{len(kills)} complete: 3 contributors" in coordinator.output()
        for site in sites:
            assert site.wait(timeout=30) == 0, site.output()
    finally:
        for process in processes:
            process.stop()
    assert assert_state_sound(federation.root / "state") == set(range(len(kills)))
    everyone = {block: federation.names for block in range(len(kills))}
    assert_masks(federation, expected_masks(federation, site_votes(federation), everyone))


# ---------------------------------------------------------------------------------- the link failing
class CuttingProxy:
    """A TCP proxy on loopback that forwards both ways and cuts its connections once, after ``cut_after``
    bytes from the client (TLS passes through it untouched: it sees only ciphertext)."""

    def __init__(self, upstream: str, *, cut_after: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_after = cut_after
        self.sent = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()  # the coordinator is not up yet: the client retries
                continue
            with self._lock:
                self._live += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if upstream:
                    with self._lock:
                        self.sent += len(data)
                        cut = self.cuts == 0 and self.sent >= self.cut_after
                        if cut:
                            self.cuts += 1
                    if cut:
                        self._cut()
                        return
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def _cut(self) -> None:
        with self._lock:
            live, self._live = self._live, []
        for end in live:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._listener.close()
        self._cut()


def test_a_connection_cut_in_the_middle_of_a_masked_input_stream_is_resumed(tmp_path: Path) -> None:
    """Also: the debug logs of every process of the run hold no private key and no keep-vote."""
    # A block of 245760 weights at 3 bits: 90 KiB of masked input in 30 chunks. Everything a site sends
    # before its first stream (TLS handshake, Join, polls, keys) is a few KiB, so a cut after 40 KiB falls
    # inside block 0's stream.
    federation = make_federation(tmp_path / "fed", hidden=128, intermediate=512)
    federation.run = {"chunk_coordinates": 8192}
    federation.privacy = {"randomized_response": False, "record_level_dp": False}
    coordinator, address = start_coordinator(federation, verbose=True)
    # A middlebox that accepts and closes while the coordinator is not up yet reads to a participant as a
    # refused TLS handshake (which it does not retry): start the proxy's client once the coordinator listens.
    coordinator.wait_for("listening on", timeout=60)
    proxy = CuttingProxy(address, cut_after=40 * 1024)
    sites = {
        name: start_participant(
            federation, name, proxy.address if name == "site-c" else address, verbose=True
        )
        for name in federation.names
    }
    try:
        for site in sites.values():
            assert site.wait(timeout=90) == 0, site.output()
        assert coordinator.wait(timeout=30) == 0, coordinator.output()
        log = coordinator.output()
    finally:
        proxy.close()
        for process in (coordinator, *sites.values()):
            process.stop()
    assert proxy.cuts == 1
    assert "MaskedInput: UNAVAILABLE, retrying" in sites["site-c"].output(), sites["site-c"].output()
    assert "dropped out" not in log, log
    assert "Traceback" not in log, log  # the cut stream is one line in the log, not an error
    assert "block 2/2 complete: 3 contributors" in log and "block 1/2 complete: 3 contributors" in log
    assert assert_state_sound(federation.root / "state") == {0, 1}
    everyone = {block: federation.names for block in range(2)}
    votes = site_votes(federation)
    assert_masks(federation, expected_masks(federation, votes, everyone))
    assert_logs_hold_no_key_or_vote(federation, votes)


def assert_logs_hold_no_key_or_vote(
    federation: Federation, votes: dict[str, dict[str, torch.Tensor]]
) -> None:
    """Check every log of the run (at debug level) for private key material and each site's keep-votes."""
    from pruning.layout import VoteLayout
    from pruning.model_io import load_model

    logs = [path.read_bytes() for path in federation.root.glob("*.log")]
    assert len(logs) == 4 and any(b"DEBUG" in log for log in logs)
    keys = [*federation.pki.glob("*.key"), federation.signing_key]
    keys += [federation.root / f"state-{name}" / "identity_key.pem" for name in federation.names]
    for key in keys:
        assert key.stat().st_mode & 0o777 == 0o600, key
        assert not found(logs, private_key_needles(key)), key
    model = load_model(federation.model)
    for name, site in votes.items():
        for block in range(2):
            layout = VoteLayout.for_block(model, block)
            bits = layout.flatten({key: site[key] > 0 for key in layout.names}, dtype=torch.bool).numpy()
            needles = [n for n in bit_vector_forms(bits) if n.isascii()]
            assert needles and not found(logs, needles), (name, block)
