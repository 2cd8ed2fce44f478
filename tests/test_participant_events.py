"""A participant's run events, from a real run of the roles in one process, and the progress bar they drive.

Each site tells its host, in order: it joined, it scored (and randomized) every block, each block's votes
are in the sum, its statement was accepted, the run is complete; a site that refuses says so, with the
reason it exits with.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedprune.cli import main
from participant.events import (
    BlockReleased,
    BlockScored,
    Joined,
    ParticipantEvent,
    RunEnded,
    StatementSubmitted,
)
from participant.progress import BlockProgressBar
from tests.tiny import random_text

SITES = 3
BLOCKS = 2


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[ParticipantEvent]]:
    """Return each in-process site's events by its name, recorded beside the host's own sink."""
    import fedprune.inprocess
    from participant.run import ParticipantRun

    events: dict[str, list[ParticipantEvent]] = {}
    lock = threading.Lock()

    class Recorded(ParticipantRun):
        def __init__(
            self, config: Any, client: Any, *, on_event: Callable[[Any], None], **kwargs: Any
        ) -> None:
            def record(event: ParticipantEvent) -> None:
                with lock:
                    events.setdefault(client.wire.name, []).append(event)
                on_event(event)

            super().__init__(config, client, on_event=record, **kwargs)

    monkeypatch.setattr(fedprune.inprocess, "ParticipantRun", Recorded)
    return events


def _simulate(tmp_path: Path, model: Path, *extra: str) -> Path:
    files = []
    for i in range(SITES):
        path = tmp_path / f"site{i}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": random_text(40, seed=50 * i + d)}) + "\n" for d in range(12)),
            encoding="utf-8",
        )
        files.append(path)
    out = tmp_path / "out"
    args = ["simulate", "--model", str(model), "--sparsity", "0.5", "--nsamples", "3", "--seqlen", "16"]
    args += ["--out", str(out), "--no-progress", "--device", "cpu", *extra]
    for path in files:
        args += ["--participant-data", str(path)]
    assert main(args) == 0
    return out


def test_each_site_reports_join_scores_releases_statement_and_completion_in_order(
    tmp_path: Path, model_dir: Callable[..., Path], recorded: dict[str, list[ParticipantEvent]]
) -> None:
    out = _simulate(tmp_path, model_dir("llama", layers=BLOCKS))
    report = json.loads((out / "privacy_report.json").read_text(encoding="utf-8"))
    assert sorted(recorded) == [f"participant-{i:03d}" for i in range(SITES)]
    for name, events in recorded.items():
        joined = events[0]
        assert isinstance(joined, Joined)
        assert (joined.run_id, joined.name, joined.blocks) == (report["run_id"], name, BLOCKS)
        statement = next(s for s in report["participant_statements"] if s["participant"] == name)
        # One-shot: each block is scored when its session starts, then released; no session waits for
        # the whole model's calibration.
        assert events[1:] == [
            BlockScored(block=0, blocks=BLOCKS),
            BlockReleased(block=0, blocks=BLOCKS),
            BlockScored(block=1, blocks=BLOCKS),
            BlockReleased(block=1, blocks=BLOCKS),
            StatementSubmitted(events=len(statement["events"])),
            RunEnded(complete=True, reason="run complete"),
        ], name
    assert len({e.participant_id for e in (events[0] for events in recorded.values())}) == SITES  # type: ignore[union-attr]


def test_a_fedspallm_site_scores_each_assigned_block_when_its_session_starts(
    tmp_path: Path, model_dir: Callable[..., Path], recorded: dict[str, list[ParticipantEvent]]
) -> None:
    _simulate(tmp_path, model_dir("llama", layers=BLOCKS), "--recipe", "fedspallm", "--budgets", "2,2,2")
    for name, events in recorded.items():
        assert [type(e).__name__ for e in events[:1] + events[-2:]] == [
            "Joined",
            "StatementSubmitted",
            "RunEnded",
        ]
        assert events[1:-2] == [
            BlockScored(block=0, blocks=BLOCKS),
            BlockReleased(block=0, blocks=BLOCKS),
            BlockScored(block=1, blocks=BLOCKS),
            BlockReleased(block=1, blocks=BLOCKS),
        ], name


def test_a_site_that_refuses_the_run_ends_with_the_reason_it_exits_with(
    tmp_path: Path, model_dir: Callable[..., Path], recorded: dict[str, list[ParticipantEvent]]
) -> None:
    """Record-level DP needs calibration records: a site handed untagged windows refuses at join."""
    from coordinator.config import PrivacySection
    from fedprune.simulate import Mode, SimulationSettings, simulate_service
    from participant.run import RunRefusedError
    from pruning.data import calibration_samples
    from pruning.masks import SparsityPattern
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size

    model = model_dir("llama", layers=BLOCKS)
    files = []
    for i in range(SITES):
        path = tmp_path / f"site{i}.jsonl"
        path.write_text(json.dumps({"text": random_text(40, seed=i)}) + "\n", encoding="utf-8")
        files.append(path)
    tokenizer, vocab = load_tokenizer(model), vocabulary_size(load_model(model))
    windows = [
        calibration_samples(f, tokenizer, nsamples=1, seqlen=16, seed=0, vocab_size=vocab) for f in files
    ]
    with pytest.raises(RunRefusedError, match="record-level DP") as refused:
        simulate_service(
            model,
            files,
            settings=SimulationSettings(pattern=SparsityPattern(sparsity=0.5), mode=Mode.ONE_SHOT, seqlen=16),
            privacy=PrivacySection.model_validate({}),
            out=tmp_path / "refused",
            signing_key=tmp_path / "report.key",
            device="cpu",
            participant_samples=windows,
            progress=False,
        )
    ends = [events[-1] for events in recorded.values()]
    assert RunEnded(complete=False, reason=str(refused.value)) in ends
    assert all(isinstance(end, RunEnded) and not end.complete for end in ends)
    assert not any(
        isinstance(e, (BlockScored, BlockReleased)) for events in recorded.values() for e in events
    )


def test_the_progress_bar_counts_each_released_block_once(capsys: pytest.CaptureFixture[str]) -> None:
    bar = BlockProgressBar(enabled=True)
    for event in (
        Joined(run_id="00", name="a", participant_id=0, blocks=3),
        BlockScored(block=0, blocks=3),
        BlockReleased(block=0, blocks=3),
        BlockReleased(block=0, blocks=3),  # the coordinator ran block 0's session again
        BlockReleased(block=1, blocks=3),
    ):
        bar(event)
    bar.close()
    bar.close()  # idempotent: the CLI closes it on every path
    assert bar.released == {0, 1}
    shown = capsys.readouterr().err
    assert "2/3" in shown and "3/3" not in shown


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Return certificates, a model and data for a site whose coordinator is not there."""
    from tests.integration.harness import make_federation

    return make_federation(tmp_path_factory.mktemp("federation"), names=("site-a", "site-b"))


def test_the_participant_command_appends_its_events_to_the_events_file(
    tmp_path: Path, federation: Any
) -> None:
    """``fedprune participant --events FILE``: a site that gives up on an unreachable coordinator says so there."""
    from fedprune.events import read_events, to_line
    from tests.integration.harness import free_address

    config = federation.participant_config("site-a", free_address(), max_retry_time_s=0.5)
    events = tmp_path / "site-a.events.jsonl"
    events.write_text(to_line(BlockScored(block=0, blocks=1)), encoding="utf-8")  # an earlier run's line
    assert main(["participant", "--config", str(config), "--events", str(events)]) == 1
    earlier, ended = read_events(events)
    assert earlier == BlockScored(block=0, blocks=1), "the file is appended to, never truncated"
    assert isinstance(ended, RunEnded) and not ended.complete and ended.reason


def test_an_events_file_that_cannot_be_opened_is_refused_naming_the_flag(
    tmp_path: Path, federation: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration.harness import free_address

    config = federation.participant_config("site-a", free_address())
    (tmp_path / "taken").write_text("a file, not a folder", encoding="utf-8")
    assert (
        main(["participant", "--config", str(config), "--events", str(tmp_path / "taken" / "e.jsonl")]) == 2
    )
    assert "--events" in capsys.readouterr().err
