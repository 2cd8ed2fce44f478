"""The coordinator's OWL allocation phase: configured, announced, resumed after a crash, never redone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from coordinator.config import ConfigError, CoordinatorConfig
from coordinator.events import AllocationSessionStarted, SessionStarted
from coordinator.run import CoordinatorRun
from coordinator.servicer import CoordinatorServicer
from proto.domain import OWL_ALLOCATION_ROUND
from tests.coordinator.loopback import Loopback
from tests.coordinator.test_run import (  # noqa: F401  (the fixture)
    BLOCKS,
    NAMES,
    Threads,
    _masks,
    _run_to_end,
    _start_participants,
    federation,
)


class Crash(BaseException):
    """Stands for the process being killed."""


OWL = {"owl": True, "owl_lambda": 0.1, "owl_outlier_multiple": 3.0}


def test_owl_is_announced_and_left_out_of_a_uniform_run(
    federation: Callable[..., CoordinatorConfig],  # noqa: F811
) -> None:
    uniform = federation("uniform")
    assert uniform.run.owl_settings is None and "owl" not in uniform.run.digest_fields()
    owl = federation("owl", **OWL)
    assert owl.run.digest_fields()["owl_lambda"] == 0.1
    run = CoordinatorRun(owl)
    try:
        announced = run.run_parameters().owl
        assert announced is not None and (announced.lam, announced.outlier_multiple) == (0.1, 3.0)
        assert run.statement_bounds.releases_per_block == 2
    finally:
        run.close()


@pytest.mark.parametrize(
    "run,privacy,problem",
    [
        ({}, {"randomized_response": True, "record_level_dp": False}, "randomized response does not cover"),
        ({"pattern": "2:4", "sparsity": None}, {}, "unstructured pattern"),
        ({"recipe": "fedspallm", "method": "sparsegpt"}, {}, "fedspallm has no OWL"),
        ({"method": "magnitude"}, {}, "reads calibration data"),
        ({"owl_lambda": 0.7}, {}, "lambda"),
    ],
)
def test_a_configuration_owl_cannot_serve_is_refused_naming_why(
    federation: Callable[..., CoordinatorConfig],  # noqa: F811
    run: dict[str, Any],
    privacy: dict[str, Any],
    problem: str,
) -> None:
    from coordinator.config import parse_config

    config = federation("base")
    data = {
        "server": {"address": "127.0.0.1:0"},
        "tls": {"ca": "ca.pem", "certificate": "c.pem", "private_key": "c.key"},
        "run": {
            "model": str(config.run.model),
            "participants": list(config.run.participants),
            "method": "wanda",
            "sparsity": 0.5,
            **OWL,
            **run,
        },
        "privacy": {"randomized_response": False, "record_level_dp": False, **privacy},
        "output": {"directory": "out", "state": "state", "signing_key": "k"},
    }
    with pytest.raises(ConfigError, match=problem):
        parse_config(data)


def test_a_coordinator_killed_in_the_allocation_phase_resumes_it_and_allocates_the_same(
    federation: Callable[..., CoordinatorConfig],  # noqa: F811
) -> None:
    clean, _ = _run_to_end(federation("clean", **OWL))
    expected_masks = _masks(clean)
    expected_allocation = clean.state.owl_allocation()
    assert expected_allocation is not None
    clean.close()

    config = federation("crashed", **OWL)
    first = CoordinatorRun(config)
    complete = first._complete_allocation_block

    def complete_then_die(block: int, *args: Any, **kwargs: Any) -> None:
        complete(block, *args, **kwargs)  # the block's outlier ratio is committed ...
        if block == 1:
            raise Crash  # ... and the process killed before the next allocation session

    first._complete_allocation_block = complete_then_die  # type: ignore[method-assign]
    loopback = Loopback(CoordinatorServicer(first))
    threads = Threads()
    threads.start("coordinator-1", first.run)
    _start_participants(threads, config, loopback)
    deadline = time.monotonic() + 60
    while "coordinator-1" not in threads.errors:
        assert time.monotonic() < deadline, "the allocation of block 1 never completed"
        time.sleep(0.01)
    assert isinstance(threads.errors.pop("coordinator-1"), Crash)
    assert first.state.owl_allocation() is None and not first.state.completed_blocks()
    first.close()  # what the kill does: the process's database handle and state-directory lock are gone

    events: list[Any] = []
    second = CoordinatorRun(config, on_event=events.append)
    assert sorted(second.state.allocation_blocks()) == [0, 1]
    loopback.servicer = CoordinatorServicer(second)
    threads.start("coordinator-2", second.run)
    threads.join()
    assert not threads.errors, threads.errors
    # Only block 2's allocation session ran again; the ratios of blocks 0 and 1 were read back.
    assert [e.block for e in events if isinstance(e, AllocationSessionStarted)] == [2]
    assert [e.block for e in events if isinstance(e, SessionStarted)] == list(range(BLOCKS))
    assert second.state.owl_allocation() == expected_allocation
    assert _masks(second) == expected_masks
    report = json.loads((config.output.directory / "privacy_report.json").read_text(encoding="utf-8"))
    sessions = [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "secure_aggregation"]
    rounds = [e["round"] for e in sessions]
    assert rounds == [OWL_ALLOCATION_ROUND] * BLOCKS + list(range(BLOCKS)), "one event per session, never two"
    sparsity = json.loads((config.output.directory / "sparsity.json").read_text(encoding="utf-8"))
    assert sparsity["allocation"] == expected_allocation
    # A restart after the allocation reads it back (and serves it before its driver resumes) and never
    # runs the phase again.
    second.close()
    third = CoordinatorRun(config)
    try:
        sparsities = [entry["sparsity"] for entry in expected_allocation["blocks"]]  # type: ignore[union-attr]
        assert list(third.owl_allocation(NAMES[0])) == sparsities
        third._allocate()
        assert third.block_pattern(2).sparsity == sparsities[2]
    finally:
        third.close()


def test_owl_under_record_level_dp_is_run_with_a_warning_that_names_the_measurement(
    federation: Callable[..., CoordinatorConfig],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = federation("owl", **OWL)
    assert not config.privacy.record_level_dp
    other = federation("private-owl", **OWL)  # its own state directory
    private = other.model_copy(update={"privacy": other.privacy.model_copy(update={"record_level_dp": True})})
    for each, warned in ((config, False), (private, True)):
        caplog.clear()
        run = CoordinatorRun(each)
        run.close()
        lines = [
            r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "run.owl" in r.getMessage()
        ]
        assert bool(lines) is warned and all("worse than magnitude pruning" in line for line in lines)
