"""``fedprune coordinator --config FILE``: run the coordinator of one federated pruning run.

Listens with mutual TLS, waits for ``run.min_participants`` of the allowed certificate names, runs one
secure-aggregation session per decoder block, writes the checkpoint, ``sparsity.json`` and the signed
privacy report, and exits 0. Killed and restarted with the same config, it resumes at the first
incomplete block.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedprune.errors import CommandError

if TYPE_CHECKING:
    from coordinator.config import CoordinatorConfig
    from fedprune.events import EventLog

logger = logging.getLogger(__name__)

EXIT_RUN_FAILED = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "coordinator", help="run the coordinator of a federated run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="coordinator TOML file")
    parser.add_argument(
        "--events",
        type=Path,
        metavar="FILE",
        help="append the run's events to FILE, one JSON object a line (docs/OPERATORS.md, 'Run events')",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from coordinator.config import ConfigError, load_config
    from coordinator.state import StateError
    from fedprune.commands.common import quiet_transformers
    from fedprune.events import EventLog
    from proto.tls import TlsConfigurationError

    quiet_transformers()
    try:
        config = load_config(args.config)
        config.check_paths()
    except (ConfigError, StateError, TlsConfigurationError) as error:
        raise CommandError(str(error)) from None
    try:
        events = EventLog(args.events) if args.events is not None else None
    except OSError as error:
        raise CommandError(f"--events {args.events}: {error.strerror or error}") from None
    try:
        return _serve(config, events)
    finally:
        if events is not None:
            events.close()


FINAL_NOTICE_S = 30.0
"""The longest a finished coordinator waits for every site to hear that the run is complete."""


def _serve(config: CoordinatorConfig, events: EventLog | None) -> int:
    from coordinator.config import ConfigError
    from coordinator.errors import CoordinatorError
    from coordinator.events import ignore
    from coordinator.run import CoordinatorRun
    from coordinator.servicer import serve
    from coordinator.state import StateError
    from privacy.durable import DirectoryInUseError
    from privacy.signing import grouped_fingerprint, load_or_create_signing_key
    from proto.tls import TlsConfigurationError

    try:
        run_ = CoordinatorRun(config, on_event=ignore if events is None else events)
    except (ConfigError, StateError, TlsConfigurationError, DirectoryInUseError) as error:
        raise CommandError(str(error)) from None
    try:
        server, port, health_servicer = serve(run_, address=config.server.address)
    except (TlsConfigurationError, RuntimeError) as error:
        run_.close()
        raise CommandError(f"server.address {config.server.address}: {error}") from None
    host = config.server.address.rpartition(":")[0]
    # The bound port on one line of its own: tests and supervisors that asked for port 0 read it here.
    print(f"fedprune coordinator listening on {host}:{port}", flush=True)
    logger.info(
        "run %s: %d blocks, participants %s", run_.run_id, run_.blocks, ", ".join(config.run.participants)
    )
    try:
        summary = run_.run()
    except (CoordinatorError, ValueError) as error:
        logger.error("run aborted: %s", error)
        run_.wait_until_told(min(5.0, config.server.await_poll_s))
        server.stop(grace=1.0)
        run_.close()
        print(f"fedprune coordinator: error: {error}", flush=True)
        return EXIT_RUN_FAILED
    # Every site hears that the run is complete before the server goes: a site that comes back to Await
    # late (a loaded machine) would otherwise find no coordinator and could not tell a finished run from a
    # crash. Returns at once when every site was told; waits longer only for a site that is gone.
    run_.wait_until_told(max(config.server.await_poll_s, FINAL_NOTICE_S))
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=2.0).wait()
    run_.close()
    key = grouped_fingerprint(load_or_create_signing_key(config.output.signing_key))
    print(
        f"run complete: {summary.output} ({summary.blocks} blocks, {summary.participants} participants); "
        f"privacy report {summary.report} signed by key {key}",
        flush=True,
    )
    return 0
