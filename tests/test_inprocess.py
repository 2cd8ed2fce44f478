"""``fedprune simulate`` runs the service's own roles in one process: per-site signed statements, one code path.

The service itself (real processes over mutual TLS) is compared with simulate in
``tests/integration/test_simulate_matches_service.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from coordinator.config import PrivacySection
from fedprune.cli import main
from fedprune.simulate import SimulationSettings, simulate_service
from participant.run import RunRefusedError
from privacy.ledger import Mechanism
from privacy.signing import ParticipantStatement, verify_statement_signature
from pruning.masks import SparsityPattern
from pruning.recipes import Mode
from tests.tiny import random_text

SITES = 3


@pytest.fixture
def sites(tmp_path: Path, model_dir) -> tuple[Path, list[Path]]:
    files = []
    for i in range(SITES):
        path = tmp_path / f"site{i}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": random_text(40, seed=50 * i + d)}) + "\n" for d in range(12)),
            encoding="utf-8",
        )
        files.append(path)
    return model_dir("llama", layers=2), files


def _simulate(model: Path, files: list[Path], out: Path, *extra: str) -> None:
    args = ["simulate", "--model", str(model), "--sparsity", "0.5", "--nsamples", "3", "--seqlen", "16"]
    args += ["--out", str(out), "--no-progress", "--device", "cpu", *extra]
    for path in files:
        args += ["--participant-data", str(path)]
    assert main(args) == 0


@pytest.mark.parametrize("mode", ["one-shot", "iterative"])
def test_simulate_report_carries_each_sites_verifiable_statement(
    sites: tuple[Path, list[Path]], tmp_path: Path, mode: str
) -> None:
    model, files = sites
    out = tmp_path / mode
    _simulate(model, files, out, "--mode", mode)
    report = json.loads((out / "privacy_report.json").read_text(encoding="utf-8"))
    assert report["threat_model"]["transport"].startswith("in-process simulation")
    statements = [ParticipantStatement.model_validate(s) for s in report["participant_statements"]]
    names = [f"participant-{i:03d}" for i in range(SITES)]
    assert [s.participant for s in statements] == names
    assert len({s.public_key for s in statements}) == SITES, "each site signs with its own identity key"
    assert {s.run_id for s in statements} == {report["run_id"]}
    for statement in statements:
        verify_statement_signature(statement)
        own = [e["event"] for e in report["ledger"] if e["event"]["participant"] == statement.participant]
        assert own == [event.model_dump(mode="json") for event in statement.events]
        mechanisms = [event.mechanism for event in statement.events]
        # One randomized-response event per block and the DP statistics of every block, all signed by the site.
        assert mechanisms.count(Mechanism.RANDOMIZED_RESPONSE) == 2
        assert Mechanism.GAUSSIAN in mechanisms and Mechanism.SECURE_AGGREGATION not in mechanisms
    coordinator = [e["event"] for e in report["ledger"] if e["event"]["participant"] == "*"]
    assert [(e["mechanism"], e["block"]) for e in coordinator] == [
        ("secure_aggregation", 0),
        ("secure_aggregation", 1),
    ]
    tampered = statements[0].model_copy(update={"events": statements[0].events[1:]})
    with pytest.raises(ValueError):
        verify_statement_signature(tampered)


def test_simulate_without_randomization_equals_the_plain_sum_in_both_modes(
    sites: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """The in-process service with randomized response and DP statistics off selects the plain-sum mask."""
    from pruning.model_io import load_model

    model, files = sites
    for mode in ("one-shot", "iterative"):
        plain, served = tmp_path / f"plain-{mode}", tmp_path / f"served-{mode}"
        _simulate(model, files, plain, "--mode", mode, "--privacy", "off")
        _simulate(model, files, served, "--mode", mode, "--epsilon0", "inf", "--record-dp", "off")
        a, b = load_model(plain).state_dict(), load_model(served).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), mode


def test_a_failing_site_aborts_the_run_at_once_and_nothing_is_written(
    sites: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    from pruning.data import calibration_samples
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size

    model, files = sites
    tokenizer = load_tokenizer(model)
    vocab = vocabulary_size(load_model(model))
    # Record-level DP needs windows tagged by document: untagged windows make every site refuse the run.
    windows = [
        calibration_samples(f, tokenizer, nsamples=2, seqlen=16, seed=0, vocab_size=vocab) for f in files
    ]
    out = tmp_path / "refused"
    started = time.monotonic()
    with pytest.raises(RunRefusedError, match="record-level DP"):
        simulate_service(
            model,
            files,
            settings=SimulationSettings(pattern=SparsityPattern(sparsity=0.5), mode=Mode.ONE_SHOT, seqlen=16),
            privacy=PrivacySection.model_validate({}),
            out=out,
            signing_key=tmp_path / "report.key",
            device="cpu",
            participant_samples=windows,
            progress=False,
        )
    assert time.monotonic() - started < 60
    assert not (out / "privacy_report.json").exists() and not (out / "config.json").exists()


def test_no_site_starts_before_every_site_has_loaded_its_model(
    sites: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading changes torch's process-wide default dtype while it lasts: no site computes meanwhile."""
    import participant.run as participant_run

    load, run = participant_run.load_model, participant_run.ParticipantRun.run
    loaded: list[float] = []
    started: list[float] = []

    def slow_load(path: Path) -> torch.nn.Module:
        model = load(path)
        time.sleep(0.05)
        loaded.append(time.monotonic())
        return model

    def timed_run(self: participant_run.ParticipantRun) -> None:
        started.append(time.monotonic())
        run(self)

    monkeypatch.setattr(participant_run, "load_model", slow_load)
    monkeypatch.setattr(participant_run.ParticipantRun, "run", timed_run)
    model, files = sites
    _simulate(model, files, tmp_path / "out", "--record-dp", "off")
    assert len(loaded) == len(started) == SITES
    assert min(started) >= max(loaded)


def test_the_coordinator_tells_its_host_each_blocks_sums_and_mask_as_typed_events(tmp_path: Path) -> None:
    """A study re-selects from what the role reported: the layer rule on the reported sums is the written mask."""
    from coordinator.aggregation import ComparisonGroup, global_mask
    from coordinator.events import BlockAggregated, RunEvent
    from fedprune.simulate import privacy_off
    from pruning.adapters import iter_prunable, qualified_name
    from tests.roles import run_roles
    from tests.tiny import build_tiny_model, random_ids

    base = build_tiny_model("llama", layers=3)
    samples = [random_ids(3, 16, seed=30 + i) for i in range(3)]
    events: list[RunEvent] = []
    pattern = SparsityPattern(sparsity=0.5)
    result = run_roles(
        base,
        samples,
        settings=SimulationSettings(pattern=pattern, seqlen=16),
        directory=tmp_path,
        privacy=privacy_off(),
        on_event=events.append,
    )
    aggregated = [event for event in events if isinstance(event, BlockAggregated)]
    assert [(e.block, e.blocks) for e in aggregated] == [(0, 3), (1, 3), (2, 3)]
    assert all(sorted(e.contributors) == list(result.participants) for e in aggregated)
    written = {qualified_name(b, n): s.weight() == 0 for b, n, s in iter_prunable(result.model)}
    for block, name, sublayer in iter_prunable(base):
        key = qualified_name(block, name)
        event = aggregated[block]
        votes = event.keep_votes[key]
        assert int(votes.min()) >= 0 and int(votes.max()) <= len(samples)
        assert torch.equal(event.global_masks[key], written[key]), key
        reselected = global_mask(votes, sublayer.weight(), pattern=pattern, group=ComparisonGroup.LAYER)
        assert torch.equal(reselected, event.global_masks[key]), key
