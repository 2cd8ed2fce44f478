"""One process per state directory: ``privacy.durable.DirectoryLock``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from privacy.durable import DirectoryInUseError, DirectoryLock


def test_a_second_lock_on_a_directory_is_refused_naming_the_directory_and_the_holder(tmp_path: Path) -> None:
    first = DirectoryLock(tmp_path, what="output.state")
    with pytest.raises(DirectoryInUseError, match=rf"output.state {tmp_path} is in use .*pid {os.getpid()}"):
        DirectoryLock(tmp_path, what="output.state")
    first.release()
    first.release()  # idempotent
    DirectoryLock(tmp_path, what="output.state").release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from privacy.durable import DirectoryLock; "
            f"DirectoryLock(Path({str(tmp_path)!r}), what='runtime.state'); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryInUseError, match=f"pid {holder.pid}"):
            DirectoryLock(tmp_path, what="runtime.state")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    DirectoryLock(tmp_path, what="runtime.state").release()
