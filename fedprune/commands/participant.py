"""``fedprune participant --config FILE``: take part in a run with this site's model and private data.

Joins the coordinator with this site's certificate, checks the base model and the run's privacy
parameters against its ``[privacy]`` minimums (refusing weaker runs, exit 1), votes block by block,
randomizes, masks and streams its votes, submits its signed statement and exits 0 when the run is
complete. Transient network failures are retried; a refused certificate or name exits 2 saying which.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fedprune.errors import CommandError

logger = logging.getLogger(__name__)

EXIT_REFUSED = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "participant", help="take part in a federated run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="participant TOML file")
    parser.add_argument(
        "--events",
        type=Path,
        metavar="FILE",
        help="append the run's events to FILE, one JSON object a line (docs/PARTICIPANTS.md, 'Run events')",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedprune.commands.common import quiet_transformers, return_large_buffers_to_the_os
    from fedprune.events import EventLog, fan_out
    from participant.client import (
        ConfigurationError,
        CoordinatorClient,
        CoordinatorUnreachableError,
        RetryPolicy,
    )
    from participant.config import ConfigError, load_config
    from participant.progress import BlockProgressBar
    from participant.run import ParticipantRun, RunAbortedError, RunRefusedError
    from privacy.durable import DirectoryInUseError
    from proto.tls import TlsConfigurationError

    quiet_transformers()
    return_large_buffers_to_the_os()
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip() not in ("", "1"):
        # N copies of one site would join under one identity and calibrate the same data N times.
        raise CommandError(
            f"WORLD_SIZE is {world}: the participant daemon runs as one process; data-parallel calibration "
            "over several processes is supported by `fedprune prune` (see docs/PARTICIPANTS.md)"
        )
    try:
        config = load_config(args.config)
        config.check_paths()
        section = config.coordinator
        client = CoordinatorClient(
            section.address,
            config.tls,
            call_timeout_s=section.call_timeout_s,
            stream_timeout_s=section.stream_timeout_s,
            policy=RetryPolicy(
                max_backoff_s=section.max_backoff_s, max_retry_time_s=section.max_retry_time_s
            ),
        )
    except (ConfigError, TlsConfigurationError) as error:
        raise CommandError(str(error)) from None
    bar = BlockProgressBar(enabled=config.runtime.progress and sys.stderr.isatty())
    try:
        events = EventLog(args.events) if args.events is not None else None
    except OSError as error:
        client.close()
        raise CommandError(f"--events {args.events}: {error.strerror or error}") from None
    try:
        ParticipantRun(config, client, on_event=bar if events is None else fan_out(bar, events)).run()
    except ConfigurationError as error:
        raise CommandError(f"configuration error: {error}") from None
    except DirectoryInUseError as error:
        raise CommandError(str(error)) from None
    except (RunRefusedError, RunAbortedError, CoordinatorUnreachableError) as error:
        print(f"fedprune participant: {error}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        bar.close()
        if events is not None:
            events.close()
        client.close()
    print("fedprune participant: run complete", file=sys.stderr)
    return 0
