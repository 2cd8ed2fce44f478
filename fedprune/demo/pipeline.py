"""``fedprune demo`` end to end: the shipped model, a federation on loopback, the baselines, the summary.

The recipe (``fedprllm``: Wanda keep-votes; ``fedspallm``: SparseGPT masks and l0-norm averaged kept
weights) decides the sites' method and the centralized and local-only baselines' method alike.
Phases, each timed: open the shipped model (fingerprint checked), cut the sites' documents, make the
throwaway CA, certificates and configs, run the real coordinator and participant processes (the baselines
are computed meanwhile, in this process), score the coordinator's checkpoint, verify the signed report
against the signing key's fingerprint, write ``summary.json`` and ``summary.html``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fedprune.demo.baselines import (
    compute_baselines,
    evaluation_text,
    federated_perplexity,
    site_names,
)
from fedprune.demo.service import (
    COORDINATOR,
    DEFAULT_RECIPE,
    RECIPE_METHODS,
    Federation,
    ProgressBoard,
    ServiceFiles,
    ServicePlan,
    free_loopback_address,
    prepare,
)
from fedprune.demo.sites import site_documents, write_site_files
from fedprune.demo.summary import (
    format_table,
    guarantees_in_words,
    render_summary_html,
    write_summary_json,
)

logger = logging.getLogger(__name__)

# Marks a folder as the demo's own, so that a second run may clear it and never clears anything else.
MARKER = ".fedprune-demo"
SERVICE_DIR = "service"
MODEL_DIR = "model"


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Every choice of a demo run; the defaults are the ones docs/BENCHMARKS.md measured."""

    out: Path
    sites: int = 4
    documents: int = 128
    sparsity: float = 0.8
    epsilon0: float = 4.0
    target_epsilon: float = 8.0
    delta: float = 1e-5
    device: str = "cpu"
    eval_windows: int | None = 128
    signing_key: Path | None = None
    cache_dir: Path | None = None
    trained_model: bool = False
    timeout_s: float = 900.0
    recipe: str = DEFAULT_RECIPE
    """``fedprllm``: Wanda keep-votes only; ``fedspallm``: SparseGPT masks and l0-norm averaged kept weights."""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPE_METHODS:
            raise ValueError(f"recipe must be one of {', '.join(RECIPE_METHODS)}, got {self.recipe!r}")
        if not 2 <= self.sites <= 16:
            raise ValueError(
                f"sites must be between 2 and 16 (the demo corpus has 16 shards), got {self.sites}"
            )
        if self.documents < 1:
            raise ValueError(f"documents must be at least 1, got {self.documents}")
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if not self.epsilon0 > 0:
            raise ValueError(f"epsilon0 must be > 0, got {self.epsilon0}")
        if not self.target_epsilon > 0:
            raise ValueError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")

    @property
    def method(self) -> str:
        """Return the pruning method of the recipe: the sites' and the centralized and local-only baselines'."""
        return RECIPE_METHODS[self.recipe]

    @property
    def key_path(self) -> Path:
        """Return the report signing key: outside the output folder, never shipped beside the report."""
        if self.signing_key is not None:
            return self.signing_key
        return self.out.resolve().parent / ".fedprune-demo-signing.key"


class Phases:
    """Wall time of each phase, in the order they ran."""

    def __init__(self, board: ProgressBoard) -> None:
        self.seconds: dict[str, float] = {}
        self._board = board

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started
        self._board.say("phase", f"{name}: {self.seconds[name]:.1f} s")


def prepare_output(out: Path) -> None:
    """Make ``out`` an empty demo folder; refuse a non-empty folder that is not an earlier demo's."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"out: {out} exists and is not a directory")
        if any(out.iterdir()):
            if not (out / MARKER).is_file():
                raise ValueError(
                    f"out: {out} is not empty and was not written by fedprune demo; choose another folder"
                )
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by fedprune demo; a new run replaces this folder\n", encoding="utf-8")


def open_model(settings: DemoSettings) -> Any:
    """Return the demo model: the shipped one (fingerprint checked), or the locally trained build."""
    if settings.trained_model:
        from fedprune.demo.build import locate_or_build

        return locate_or_build(cache_dir=settings.cache_dir)
    from fedprune.demo.packaged import open_packaged

    return open_packaged(cache_dir=settings.cache_dir)


def run_demo(
    settings: DemoSettings,
    *,
    write: Callable[[str], None] = print,
    on_started: Callable[[Federation], None] | None = None,
) -> dict[str, Any]:
    """Return the summary of a complete demo run; every process it starts is stopped before it returns.

    ``on_started`` is called once the federation's processes run (tests use it to interrupt the demo).
    """
    # One compute thread here and in each process: five processes share the cores, and torch's spinning
    # threads slow down several-fold when oversubscribed (measured: 3.3 s for an evaluation on one
    # thread, 13.8 s on two, with the sites running beside it).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(settings, write=write, on_started=on_started)
    finally:
        torch.set_num_threads(threads)


def _run(
    settings: DemoSettings,
    *,
    write: Callable[[str], None] = print,
    on_started: Callable[[Federation], None] | None = None,
) -> dict[str, Any]:
    from privacy.report import PrivacyReport, render_html, verify_report
    from privacy.signing import TrustedKey, grouped_fingerprint, key_fingerprint, load_or_create_signing_key

    started = time.perf_counter()
    # Absolute: the configs name these paths, and the processes read them from their own directory.
    out = settings.out.resolve()
    names = list(site_names(settings.sites))
    board = ProgressBoard(names, write=write, started=started, recipe=settings.recipe)
    phases = Phases(board)
    prepare_output(out)
    files = ServiceFiles(out / SERVICE_DIR)
    checkpoint = out / MODEL_DIR

    with phases.phase("model"):
        demo = open_model(settings)
        fingerprint = demo.manifest.get("packaged", {}).get("fingerprint")
        board.say(
            "model",
            f"{demo.model_dir} ({demo.manifest['training']['parameters'] / 1e6:.1f} M parameters"
            + (f"; shipped build, SHA-256 {fingerprint[:16]}... checked" if fingerprint else "")
            + ")",
        )
    with phases.phase("data"):
        documents = site_documents(demo, settings.sites, settings.documents)
        site_files = write_site_files(documents, files.root / "data", names=names)
        text = evaluation_text(
            demo.model_dir, demo.eval_file, seqlen=demo.seq_len, max_windows=settings.eval_windows
        )
        board.say(
            "data",
            f"{settings.sites} sites x {settings.documents} documents (non-IID: each site holds its own "
            f"topics); evaluation on {text.windows} held-out windows of {text.seqlen} tokens",
        )
    signing_key = settings.key_path
    signing_key.parent.mkdir(parents=True, exist_ok=True)
    report_key = key_fingerprint(load_or_create_signing_key(signing_key))
    plan = ServicePlan(
        model_dir=demo.model_dir,
        site_files=tuple(site_files),
        site_names=tuple(names),
        sparsity=settings.sparsity,
        seqlen=demo.seq_len,
        epsilon0=settings.epsilon0,
        target_epsilon=settings.target_epsilon,
        delta=settings.delta,
        device=settings.device,
        output_dir=checkpoint,
        signing_key=signing_key,
        recipe=settings.recipe,
    )
    with phases.phase("certificates and configs"):
        site_keys = prepare(plan, files, address=free_loopback_address())
        board.say("setup", f"throwaway CA, {settings.sites + 1} certificates, configs in {files.configs}")

    federation = Federation(files, board)
    try:
        service_started = time.perf_counter()
        federation.start(COORDINATOR, "coordinator")
        for name in names:
            federation.start(name, "participant")
        board.say(
            "service",
            f"started the coordinator and {settings.sites} participants (logs in {files.logs}); recipe "
            f"{settings.recipe} ({settings.method}); privacy: "
            f"record-level DP epsilon {settings.target_epsilon:g} at delta {settings.delta:g} per site, "
            f"randomized response epsilon0 {settings.epsilon0:g}, secure aggregation",
        )
        if on_started is not None:
            on_started(federation)
        # The baselines run here while the sites compute.
        with phases.phase("baselines (during the run)"):
            baselines = compute_baselines(
                demo.model_dir,
                dict(zip(names, site_files, strict=True)),
                text,
                sparsity=settings.sparsity,
                device=torch.device(settings.device if settings.device != "auto" else "cpu"),
                method=settings.method,
                recipe=settings.recipe,
                on_result=lambda name, value, seconds: _baseline_done(
                    board, federation, name, value, seconds
                ),
            )
        federation.wait(timeout_s=settings.timeout_s)
        phases.seconds["federated run (service)"] = time.perf_counter() - service_started
        board.say("phase", f"federated run (service): {phases.seconds['federated run (service)']:.1f} s")
    finally:
        federation.stop()

    with phases.phase("evaluation"):
        federated = federated_perplexity(checkpoint, text, device=torch.device("cpu"))
        board.say("evaluation", f"private federated: perplexity {federated:.2f}")
    with phases.phase("report verification"):
        report_path = checkpoint / "privacy_report.json"
        report_text = report_path.read_text(encoding="utf-8")
        verified = verify_report(
            report_text,
            trusted_public_key=TrustedKey(report_key, source="the demo's signing key"),
            trusted_participant_keys={name: TrustedKey(fp, source=name) for name, fp in site_keys.items()},
        )
        board.say(
            "report",
            f"verified: {verified.checked_figures} figures recomputed, signature by the pinned key "
            f"{grouped_fingerprint(bytes.fromhex(PrivacyReport.from_json(report_text).signature.public_key))}"  # type: ignore[union-attr]
            f", {len(verified.statements)} site statements signed by their pinned keys",
        )

    sparsity = json.loads((checkpoint / "sparsity.json").read_text(encoding="utf-8"))
    report = json.loads(report_text)
    summary: dict[str, Any] = {
        "settings": {
            "sites": settings.sites,
            "documents_per_site": settings.documents,
            "sparsity": settings.sparsity,
            "recipe": settings.recipe,
            "method": settings.method,
            "pattern": "unstructured",
            "comparison_group": "layer",
            "mode": "one-shot",
            "record_level_dp": {"target_epsilon": settings.target_epsilon, "delta": settings.delta},
            "randomized_response": {"epsilon0": settings.epsilon0},
            "secure_aggregation": {"threshold": report["threat_model"]["secure_aggregation_threshold"]},
        },
        "model": {
            "directory": str(demo.model_dir),
            "packaged_fingerprint": fingerprint,
            "parameters": demo.manifest["training"]["parameters"],
        },
        "perplexity": {
            "dense": baselines.dense,
            "magnitude": baselines.magnitude,
            "centralized": baselines.centralized,
            "local_only_mean": baselines.local_only_mean,
            "local_only_worst": baselines.local_only_worst,
            "federated_no_privacy": baselines.federated_no_privacy,
            "private_federated": federated,
        },
        "local_only": baselines.local_only,
        "evaluation": {"windows": text.windows, "total_windows": text.total_windows, "seqlen": text.seqlen},
        "sparsity": {"target": settings.sparsity, "reached": sparsity["total"]["sparsity"]},
        "guarantees": guarantees_in_words(report, weight_updates=settings.recipe == "fedspallm"),
        "report": {
            "path": str(report_path),
            "verified": True,
            "signer_fingerprint": grouped_fingerprint(bytes.fromhex(report["signature"]["public_key"])),
            "checked_figures": verified.checked_figures,
            "site_statements": {s.participant: s.fingerprint for s in verified.statements},
            "verify_command": f"fedprune audit verify {report_path} --trusted-key {report_key}",
        },
        "outputs": {
            "checkpoint": str(checkpoint),
            "summary_json": str(out / "summary.json"),
            "summary_html": str(out / "summary.html"),
            "configs": str(files.configs),
            "logs": str(files.logs),
        },
    }
    with phases.phase("summary"):
        layers = {
            matrix["name"]: {"shape": "x".join(map(str, matrix["shape"])), "sparsity": matrix["sparsity"]}
            for matrix in sparsity["matrices"]
        }
        summary["phases"] = dict(phases.seconds)
        summary["phases"]["total"] = time.perf_counter() - started
        write_summary_json(summary, out / "summary.json")
        page = render_summary_html(
            summary,
            layers=layers,
            report_html=render_html(PrivacyReport.from_json(report_text), verification=verified),
        )
        (out / "summary.html").write_text(page, encoding="utf-8")
    summary["phases"] = dict(phases.seconds)
    summary["phases"]["total"] = time.perf_counter() - started
    write_summary_json(summary, out / "summary.json")
    return summary


def _baseline_done(
    board: ProgressBoard, federation: Federation, name: str, value: float, seconds: float
) -> None:
    board.say("baseline", f"{name}: perplexity {value:.2f} ({seconds:.1f} s)")
    # A failed process ends the demo now, not after the remaining baselines.
    federation.check()


def describe_result(summary: dict[str, Any]) -> str:
    """Return the closing text: the table, the recipe and its method, the guarantees, the phase times and
    where everything is.
    """
    lines = ["", format_table(summary), "", "privacy:"]
    lines += [f"  - {sentence}" for sentence in summary["guarantees"]]
    lines += ["", "time of each phase:"]
    lines += [f"  {name:<28} {seconds:6.1f} s" for name, seconds in summary["phases"].items()]
    outputs = summary["outputs"]
    lines += [
        "",
        f"pruned checkpoint: {outputs['checkpoint']} (loads with transformers' from_pretrained)",
        f"signed privacy report: {summary['report']['path']}",
        f"  verified with the signing key's fingerprint; an auditor runs: {summary['report']['verify_command']}",
        f"summary: {outputs['summary_json']} and {outputs['summary_html']} (open it in a browser)",
        f"configs of the run: {outputs['configs']}",
    ]
    return "\n".join(lines)
