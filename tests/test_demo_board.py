"""The demo's progress board: one line per run event of its processes, and their warnings as they are.

Progress comes from the typed events (``--events`` files) alone: an INFO log line, whatever it says, never
moves the board.
"""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path

from coordinator.events import BlockAggregated, ParticipantsPresent, RunFinished, SessionStarted
from fedprune.demo.service import ProgressBoard
from fedprune.events import to_line
from participant.events import BlockReleased, BlockScored, Joined, RunEnded, StatementSubmitted

SITES = ("site-1", "site-2")
STAMP = re.compile(r"^\[ *\d+\.\d+s\] ")


def _board(recipe: str = "fedprllm") -> tuple[ProgressBoard, list[str]]:
    lines: list[str] = []
    board = ProgressBoard(SITES, write=lines.append, started=time.perf_counter(), recipe=recipe)
    return board, lines


def _text(lines: list[str]) -> list[str]:
    """Return the lines without their time stamp (the seconds vary)."""
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def _run(board: ProgressBoard) -> None:
    """Feed the events of a 2-block run with 2 sites, in the order the processes write them."""
    for site in SITES:
        board.on_event(site, Joined(run_id="ab" * 16, name=site, participant_id=1, blocks=2))
    board.on_event("coordinator", ParticipantsPresent(names=("site-2", "site-1")))
    for site in SITES:
        board.on_event(site, BlockScored(block=0, blocks=2))
        board.on_event(site, BlockScored(block=1, blocks=2))
    for block in range(2):
        board.on_event("coordinator", SessionStarted(block=block, blocks=2, members=SITES, attempt=1))
        for site in SITES:
            board.on_event(site, BlockReleased(block=block, blocks=2))
        board.on_event(
            "coordinator",
            BlockAggregated(block=block, blocks=2, contributors=SITES, keep_votes={}, global_masks={}),
        )
    for site in SITES:
        board.on_event(site, StatementSubmitted(events=7))
    board.on_event("coordinator", RunFinished(output=Path("/out/model"), report=Path("/out/model/r.json")))
    for site in SITES:
        board.on_event(site, RunEnded(complete=True, reason="run complete"))


def test_a_run_of_events_gives_one_line_per_join_block_statement_and_completion() -> None:
    board, lines = _board()
    _run(board)
    text = _text(lines)
    summed = "2 sites' randomized votes summed under secure aggregation, mask published"
    assert text[:3] == [
        "site-1      joined: certificate accepted, base-model fingerprint matches",
        "site-2      joined: certificate accepted, base-model fingerprint matches",
        "coordinator 2 participants present: site-1, site-2; the run starts",
    ]
    assert text[3:5] == [
        f"{site:<11} votes of every block computed, randomized and ready to mask" for site in SITES
    ]
    assert [re.sub(r" \(\d+\.\d s\)$", "", line) for line in text[5:7]] == [
        f"block 1/2   {summed}",
        f"block 2/2   {summed}",
    ]
    assert text[7:] == [
        "site-1      signed its privacy statement (7 ledger events)",
        "site-2      signed its privacy statement (7 ledger events)",
        "coordinator checkpoint and signed privacy report written to /out/model",
        "site-1      done",
        "site-2      done",
    ]
    assert (board.blocks, board.completed_blocks) == (2, 2)


def test_the_run_starts_on_the_board_once_every_site_present_said_it_joined() -> None:
    """The coordinator admits a site before the site has checked the run: the site's word comes first."""
    board, lines = _board()
    board.on_event("coordinator", ParticipantsPresent(names=SITES))
    board.on_event("site-2", Joined(run_id="00", name="site-2", participant_id=2, blocks=1))
    assert len(lines) == 1
    board.on_event("site-1", Joined(run_id="00", name="site-1", participant_id=1, blocks=1))
    assert [line.split()[0] for line in _text(lines)] == ["site-2", "site-1", "coordinator"]
    board, lines = _board()
    board.on_event("coordinator", ParticipantsPresent(names=SITES))
    board.on_event("site-1", RunEnded(complete=False, reason="refused"))  # a site that never says it joined
    assert _text(lines) == [
        "coordinator 2 participants present: site-1, site-2; the run starts",
        "site-1      stopped: refused",
    ]


def test_a_block_line_times_the_block_from_its_session() -> None:
    board, lines = _board()
    board.on_event("coordinator", SessionStarted(block=0, blocks=1, members=SITES, attempt=1))
    time.sleep(0.25)
    board.on_event(
        "coordinator", BlockAggregated(block=0, blocks=1, contributors=SITES, keep_votes={}, global_masks={})
    )
    seconds = float(re.search(r"\((\d+\.\d) s\)$", lines[-1])[1])  # type: ignore[index]
    assert 0.2 <= seconds < 5


def test_fedspallm_says_which_block_a_site_pruned_first_and_the_weights_averaged() -> None:
    board, lines = _board("fedspallm")
    board.on_event("site-1", BlockScored(block=1, blocks=3))  # assigned blocks 1 and 2 only
    board.on_event("site-1", BlockScored(block=2, blocks=3))
    board.on_event(
        "coordinator", BlockAggregated(block=1, blocks=3, contributors=SITES, keep_votes={}, global_masks={})
    )
    text = _text(lines)
    assert (
        text[0] == "site-1      block 2 pruned with SparseGPT: votes randomized, weight updates ready to mask"
    )
    assert len(text) == 2 and "weight updates summed under secure aggregation, mask and averaged" in text[1]


def test_a_site_that_stops_says_why() -> None:
    board, lines = _board()
    board.on_event("site-2", RunEnded(complete=False, reason="the coordinator aborted the run: too few"))
    assert _text(lines) == ["site-2      stopped: the coordinator aborted the run: too few"]


def test_log_lines_never_move_the_board_only_warnings_and_errors_are_shown() -> None:
    board, lines = _board()
    for line in (
        "INFO coordinator.run: block 1/2 complete: 2 contributors",
        "INFO coordinator.run: site-1 joined as participant 1",
        "INFO participant.run: block 0: session started with 2 participants",
        "INFO participant.run: run abc complete",
        "fedprune participant: run complete",
    ):
        board.on_line("coordinator" if "coordinator" in line else "site-1", line + "\n")
    assert lines == [] and board.completed_blocks == 0
    board.on_line("coordinator", "fedprune coordinator listening on 127.0.0.1:4321\n")
    board.on_line("coordinator", "WARNING coordinator.run: block 0: site-2 dropped out (no masked input)\n")
    board.on_line("site-1", "WARNING transformers.modeling_utils: some weights are new\n")
    board.on_line("site-1", "ERROR participant.run: proof of a lying coordinator\n")
    board.on_line("site-2", "fedprune participant: error: configuration error: x\n")
    assert _text(lines) == [
        "coordinator listening on 127.0.0.1:4321 (mutual TLS)",
        "coordinator warning: block 0: site-2 dropped out (no masked input)",
        "site-1      error: proof of a lying coordinator",
        "site-2      fedprune participant: error: configuration error: x",
    ]


def test_the_federation_shows_the_events_of_several_files_in_the_order_they_happened(tmp_path: Path) -> None:
    """What the processes append reaches the board while they run, merged by time, and all of it by ``stop``."""
    from fedprune.demo.service import Federation, ServiceFiles

    board, lines = _board()
    federation = Federation(ServiceFiles(tmp_path), board)
    files = {name: tmp_path / f"{name}.events.jsonl" for name in ("coordinator", "site-1")}
    at = [datetime.datetime(2026, 1, 2, 3, 4, second, tzinfo=datetime.timezone.utc) for second in range(6)]
    aggregated = BlockAggregated(block=0, blocks=1, contributors=("site-1",), keep_votes={}, global_masks={})
    # Written before they are followed, so that one round reads them all.
    files["coordinator"].write_text(
        to_line(ParticipantsPresent(names=("site-1",)), now=at[0])
        + to_line(SessionStarted(block=0, blocks=1, members=("site-1",), attempt=1), now=at[1])
        + to_line(aggregated, now=at[4])
        + to_line(RunFinished(output=Path("/out"), report=Path("/out/r.json")), now=at[5]),
        encoding="utf-8",
    )
    files["site-1"].write_text(
        to_line(Joined(run_id="00", name="site-1", participant_id=0, blocks=1), now=at[2])
        + to_line(StatementSubmitted(events=3), now=at[3]),
        encoding="utf-8",
    )
    federation.follow("coordinator", files["coordinator"], ("site-1", files["site-1"]))
    deadline = time.monotonic() + 5
    while len(lines) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    text = _text(lines)
    assert [line.split()[0] for line in text] == [
        "site-1",
        "coordinator",
        "site-1",
        "block",
        "coordinator",
    ], text
    assert text[1].startswith("coordinator 1 participants present")
    assert text[3].endswith("(3.0 s)"), "a block is timed by its events' times, not by when they were read"
    with open(files["site-1"], "a", encoding="utf-8") as file:  # the last line before the process ends
        file.write(to_line(RunEnded(complete=True, reason="run complete")))
    assert federation.stop() == 0
    assert _text(lines)[-1] == "site-1      done"
