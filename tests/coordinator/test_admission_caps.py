"""Refusal lines are bounded per caller: no caller, listed or not, can fill the coordinator's log."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from coordinator.admission import (
    OUTSIDE_CALLERS,
    Admission,
    CallLimits,
    RefusalLog,
)

LOGGER = "tests.refusals"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_each_caller_gets_its_burst_then_one_line_counting_what_was_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    log = RefusalLog(logging.getLogger(LOGGER), burst=3, window_s=60.0, clock=clock)
    caplog.set_level(logging.INFO, logger=LOGGER)
    for i in range(10):
        log.refused("site-a", "Join refused: %d", i)
    log.refused("site-b", "Join refused: b")  # another caller has its own budget
    assert _lines(caplog) == ["Join refused: 0", "Join refused: 1", "Join refused: 2", "Join refused: b"]

    caplog.clear()
    clock.now += 59.0
    log.refused("site-a", "still inside the window")
    assert _lines(caplog) == []
    clock.now += 1.0  # the next window: the count of the 8 left out comes first
    log.refused("site-a", "Join refused: again")
    assert _lines(caplog) == [
        "8 more refusals of site-a were not logged in the last window (at most 3 lines each 60 s)",
        "Join refused: again",
    ]


class _Context:
    """A TLS auth context for ``name`` (the certificate check is proto.tls's; here only the caps matter)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(code.name)


def test_strangers_minting_names_share_one_budget_of_refusal_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coordinator.admission as admission_module

    monkeypatch.setattr(admission_module, "peer_common_name", lambda context: context.name)
    admission = Admission(
        participants=frozenset({"site-a"}),
        limits=CallLimits(max_calls_per_participant=2, max_monitoring_calls=2, idle_timeout_s=5.0),
    )
    admission.refusals = RefusalLog(logging.getLogger(LOGGER), burst=5)
    caplog.set_level(logging.INFO, logger=LOGGER)
    for i in range(200):
        context: Any = _Context(f"stranger-{i}")
        with (
            pytest.raises(RuntimeError, match="PERMISSION_DENIED"),
            admission.admitted(context, "/fedprune.v1.Coordinator/Join"),
        ):
            pass
    lines = _lines(caplog)
    assert len(lines) == 5 and all("PERMISSION_DENIED" in line for line in lines)
    assert admission.refusals._windows.keys() == {OUTSIDE_CALLERS}


def test_the_operators_monitors_keep_their_own_cap_while_strangers_hold_the_shared_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import contextlib

    import coordinator.admission as admission_module

    monkeypatch.setattr(admission_module, "peer_common_name", lambda context: context.name)
    admission = Admission(
        participants=frozenset({"site-a"}),
        limits=CallLimits(max_calls_per_participant=2, max_monitoring_calls=2, idle_timeout_s=5.0),
        monitors=frozenset({"monitor"}),
    )
    health = "/grpc.health.v1.Health/Check"
    with contextlib.ExitStack() as held:
        for i in range(2):  # strangers fill the pool all other names share
            held.enter_context(admission.admitted(_Context(f"stranger-{i}"), health))  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
            held.enter_context(admission.admitted(_Context("stranger-9"), health))  # type: ignore[arg-type]
        for _ in range(2):  # the monitor's own cap is untouched ...
            held.enter_context(admission.admitted(_Context("monitor"), health))  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):  # ... and bounded too
            held.enter_context(admission.admitted(_Context("monitor"), health))  # type: ignore[arg-type]
    with (  # a monitor checks health; it cannot call the run's service
        pytest.raises(RuntimeError, match="PERMISSION_DENIED"),
        admission.admitted(_Context("monitor"), "/fedprune.v1.Coordinator/Join"),  # type: ignore[arg-type]
    ):
        pass
