"""coordinator.state: what the coordinator acknowledged is on disk, and a reopened state resumes it exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.report import secure_aggregation_event
from coordinator.state import RunState, StateError


def _event(block: int):  # type: ignore[no-untyped-def]
    return secure_aggregation_event(
        block=block,
        coordinates=64,
        participants=3,
        threshold=2,
        contributors=["site-a", "site-b", "site-c"],
        colluders=0,
    )


def test_a_reopened_state_keeps_its_run_id_roster_and_finished_blocks(tmp_path: Path) -> None:
    state = RunState(tmp_path, parameters_digest="a")
    alice = state.bind("site-a", b"\x01" * 32)
    bob = state.bind("site-b", b"\x02" * 32)
    state.complete_block(0, packed_mask=b"\xff\x00", contributors=3, event=_event(0))
    run_id = state.run_id
    state.close()  # or killed: every commit above was fsync'd before it returned

    again = RunState(tmp_path, parameters_digest="a")
    assert again.run_id == run_id and again.boot == 2
    assert again.members() == {"site-a": alice, "site-b": bob}
    assert again.bind("site-a", b"\x09" * 32) == alice  # the first key stays bound to the name
    assert list(again.completed_blocks()) == [0] and again.packed_mask(0) == b"\xff\x00"
    again.close()


def test_a_block_completed_twice_after_a_crash_is_one_block(tmp_path: Path) -> None:
    state = RunState(tmp_path, parameters_digest="a")
    state.complete_block(1, packed_mask=b"\x0f", contributors=3, event=_event(1))
    state.complete_block(1, packed_mask=b"\x0f", contributors=3, event=_event(1))  # retried after a crash
    assert len(state.completed_blocks()) == 1
    state.close()


def test_a_resumed_block_starts_from_zero_counts_never_from_a_half_filled_file(tmp_path: Path) -> None:
    state = RunState(tmp_path, parameters_digest="a")
    half = state.counts(2, 8)
    half[:] = 7  # masked inputs accumulated before a kill
    half.flush()
    del half
    state.close()
    again = RunState(tmp_path, parameters_digest="a")
    assert not np.asarray(again.counts(2, 8)).any()
    again.close()


def test_another_runs_parameters_or_a_tampered_mask_are_refused(tmp_path: Path) -> None:
    state = RunState(tmp_path, parameters_digest="a")
    state.complete_block(0, packed_mask=b"\xaa", contributors=2, event=_event(0))
    state.close()
    with pytest.raises(StateError, match="holds a run with other"):
        RunState(tmp_path, parameters_digest="b")
    again = RunState(tmp_path, parameters_digest="a")
    again.mask_file(0).write_bytes(b"\xab")
    with pytest.raises(StateError, match="does not match its recorded digest"):
        again.packed_mask(0)
    with pytest.raises(StateError, match="block 1 has no global mask yet"):
        again.packed_mask(1)
    again.close()


def test_statements_are_kept_once_per_participant(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privacy.signing import sign_participant_statement

    key = Ed25519PrivateKey.generate()
    state = RunState(tmp_path, parameters_digest="a")
    for _ in range(2):  # a statement sent again after a lost reply
        state.save_statement(
            sign_participant_statement(participant="site-a", run_id=state.run_id, events=[], private_key=key)
        )
    assert list(state.statements()) == ["site-a"]
    state.close()


def test_a_second_coordinator_on_the_state_directory_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    from privacy.durable import DirectoryInUseError

    state = RunState(tmp_path / "state", parameters_digest="a")
    with pytest.raises(DirectoryInUseError, match="output.state .* is in use by another process"):
        RunState(tmp_path / "state", parameters_digest="a")
    state.close()
    again = RunState(tmp_path / "state", parameters_digest="a")
    assert again.boot == 2
    again.close()


def test_a_refused_resume_releases_the_state_directory(tmp_path: Path) -> None:
    RunState(tmp_path / "state", parameters_digest="a").close()
    with pytest.raises(StateError, match="other"):
        RunState(tmp_path / "state", parameters_digest="b")
    RunState(tmp_path / "state", parameters_digest="a").close()
