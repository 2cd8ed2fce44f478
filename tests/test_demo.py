"""``fedprune demo``: the shipped model (fingerprint checked), the summary it writes, and real runs.

The end-to-end tests run the real command (a coordinator and participant processes on loopback) on the
shipped model with a few documents per site and a few evaluation windows, so they stay fast in CI.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedprune.cli import main
from fedprune.demo.packaged import ASSET_SHA256, ASSETS_DIR, DemoAssetError, open_packaged, verify_assets
from fedprune.demo.pipeline import DemoSettings
from fedprune.demo.summary import (
    ROWS,
    external_references,
    format_table,
    guarantees_in_words,
    render_summary_html,
    write_summary_json,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the model
def test_shipped_model_matches_its_pinned_fingerprints_and_opens(tmp_path: Path) -> None:
    verify_assets()
    demo = open_packaged(cache_dir=tmp_path)
    assert (demo.model_dir / "model.safetensors").is_file()
    assert len(demo.shard_files) == 16 and demo.eval_file.is_file()
    assert (demo.directory / "LICENSE-PSF.txt").read_text(encoding="utf-8").strip()
    assert demo.manifest["packaged"]["weights_dtype"] == "float16"
    # A second open reuses the unpacked copy.
    assert open_packaged(cache_dir=tmp_path).directory == demo.directory


def test_a_corrupted_shipped_model_is_refused_naming_the_file(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS_DIR, assets)
    weights = assets / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(DemoAssetError) as refused:
        open_packaged(cache_dir=tmp_path / "cache", assets_dir=assets)
    message = str(refused.value)
    assert "model.safetensors" in message and "corrupted" in message
    assert ASSET_SHA256["model/model.safetensors"] in message
    assert "fedprune demo-model --rebuild" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("demo-model-*/model"))


def test_a_missing_shipped_file_is_refused(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS_DIR, assets)
    (assets / "texts.json.gz").unlink()
    with pytest.raises(DemoAssetError, match="texts.json.gz is missing"):
        verify_assets(assets)


def test_a_modified_unpacked_copy_is_unpacked_again(tmp_path: Path) -> None:
    demo = open_packaged(cache_dir=tmp_path)
    weights = demo.model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    again = open_packaged(cache_dir=tmp_path)
    expected = again.manifest["packaged"]["float32_weights_sha256"]
    import hashlib

    assert hashlib.sha256((again.model_dir / "model.safetensors").read_bytes()).hexdigest() == expected


# ---------------------------------------------------------------------------------------- the summary
def _summary() -> dict[str, object]:
    return {
        "settings": {"sites": 4, "documents_per_site": 128, "sparsity": 0.7},
        "perplexity": {
            "dense": 136.1,
            "magnitude": 170.5,
            "centralized": 160.6,
            "local_only_mean": 162.0,
            "local_only_worst": 163.5,
            "federated_no_privacy": 158.2,
            "private_federated": 160.4,
        },
        "local_only": {"site-1": 160.5, "site-2": 163.5},
        "evaluation": {"windows": 343, "total_windows": 343, "seqlen": 128},
        "sparsity": {"target": 0.7, "reached": 0.7},
        "guarantees": ["Record-level differential privacy for each site: epsilon 8.00 at delta 1e-05"],
        "phases": {"model": 0.1, "federated run (service)": 30.0},
        "report": {"signer_fingerprint": "ab12 cd34"},
    }


def test_summary_json_holds_every_row_of_the_table(tmp_path: Path) -> None:
    path = write_summary_json(_summary(), tmp_path / "summary.json")
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["summary_version"] == 1
    assert set(written["perplexity"]) == {key for key, _, _ in ROWS}


def test_summary_json_refuses_a_table_with_a_missing_row(tmp_path: Path) -> None:
    summary = _summary()
    del summary["perplexity"]["centralized"]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="summary.perplexity: missing centralized"):
        write_summary_json(summary, tmp_path / "summary.json")


def test_terminal_table_shows_each_model_against_dense() -> None:
    table = format_table(_summary())
    assert "private federated" in table and "+17.9%" in table  # 160.4 / 136.1
    assert "federated, no privacy" in table and "+16.2%" in table  # 158.2 / 136.1
    assert "reached 0.7000" in table


def test_the_baselines_include_the_same_federation_without_privacy(tmp_path: Path) -> None:
    from fedprune.demo.baselines import compute_baselines, evaluation_text
    from fedprune.demo.sites import site_documents, write_site_files

    demo = open_packaged(cache_dir=tmp_path / "cache")
    files = write_site_files(site_documents(demo, 2, 4), tmp_path / "data")
    text = evaluation_text(demo.model_dir, demo.eval_file, seqlen=demo.seq_len, max_windows=4)
    seen: list[str] = []
    baselines = compute_baselines(
        demo.model_dir,
        {f"site-{i + 1}": path for i, path in enumerate(files)},
        text,
        sparsity=0.5,
        device=torch.device("cpu"),
        on_result=lambda name, value, seconds: seen.append(name),
    )
    assert "federated, no privacy" in seen
    assert math.isfinite(baselines.federated_no_privacy)
    # A pruned model: worse than dense, and no privacy noise, so no worse than pruning by magnitude alone.
    assert baselines.dense < baselines.federated_no_privacy < baselines.magnitude


def test_summary_page_is_self_contained_with_table_chart_sparsity_and_report() -> None:
    report = "<!doctype html><html><head></head><body><h1>Privacy report <code>r1</code></h1></body></html>"
    page = render_summary_html(
        _summary(), layers={"blocks.0.q_proj": {"shape": "256x256", "sparsity": 0.7}}, report_html=report
    )
    assert page.count("<svg") == 1 and "<rect" in page
    assert "private federated" in page and "160.40" in page
    assert "blocks.0.q_proj" in page and "Privacy report <code>r1</code>" in page
    assert external_references(page) == []
    assert "<script" not in page


def test_summary_names_the_recipe_and_the_method_that_ran() -> None:
    summary = _summary()
    summary["settings"] = {
        "sites": 4,
        "documents_per_site": 128,
        "sparsity": 0.7,
        "recipe": "fedspallm",
        "method": "sparsegpt",
    }
    table = format_table(summary)
    assert "recipe: fedspallm" in table and "with SparseGPT" in table
    report = "<!doctype html><html><body>report</body></html>"
    page = render_summary_html(summary, layers={}, report_html=report)
    assert "SparseGPT" in page and "FedSpaLLM" in page and "Wanda" not in page
    # A summary naming no recipe is the FedPrLLM one, with Wanda.
    assert "recipe: fedprllm" in format_table(_summary()) and "with Wanda" in format_table(_summary())


def test_the_demo_refuses_an_unknown_recipe(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["demo", "--recipe", "bogus", "--out", str(tmp_path / "demo")])
    assert refused.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
    with pytest.raises(ValueError, match="recipe must be one of fedprllm, fedspallm"):
        DemoSettings(out=tmp_path / "demo", recipe="bogus")


def test_external_references_are_found() -> None:
    assert external_references("<img src='https://example.org/x.png'>") == ["https://example.org/x.png"]
    assert external_references("<style>a{background:url(x.png)}</style>") == ["x.png"]


def test_guarantees_are_stated_once_for_sites_with_the_same_figure() -> None:
    guarantee = {
        "layer": "calibration_statistics",
        "epsilon": 7.99,
        "delta": 1e-5,
        "unit": "one document",
        "details": {"releases": 4},
    }
    report = {
        "guarantees": [{**guarantee, "participant": "site-1"}, {**guarantee, "participant": "site-2"}],
        "threat_model": {"participants": 2, "secure_aggregation_threshold": 2, "transport": "gRPC"},
    }
    sentences = guarantees_in_words(report)
    assert len(sentences) == 2
    assert "each site: epsilon 7.99 at delta 1e-05" in sentences[0] and "one document" in sentences[0]


def test_the_printed_guarantees_claim_no_more_than_the_report() -> None:
    calibration = {
        "layer": "calibration_statistics",
        "participant": "site-1",
        "epsilon": 7.99,
        "delta": 1e-5,
        "unit": "one document",
        "details": {"releases": 4},
    }
    aggregation = {
        "layer": "aggregation",
        "participant": "*",
        "epsilon": None,
        "delta": 1e-5,
        "unit": "one bit",
        "details": {"valid": False, "reason": "bound not claimed: the sessions also summed weight updates"},
    }
    report = {
        "guarantees": [calibration, aggregation],
        "threat_model": {"participants": 2, "data_dependent_aborts": "a site with no long document stops"},
    }
    sentences = guarantees_in_words(report, weight_updates=True)
    assert "covers everything" not in sentences[0] and "not what the report's threat model" in sentences[0]
    assert "sees only" not in sentences[1] and "shows its raw keep bit" in sentences[1]
    assert sentences[-1] == "Outside every guarantee: a site with no long document stops"


# ------------------------------------------------------------------------------------ real demo runs
def _environment(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FEDPRUNE_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _processes_naming(text: str) -> list[int]:
    """Return the pids of processes whose command line mentions ``text`` (the demo's output folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


SMALL = ["--sites", "3", "--documents", "6", "--sparsity", "0.5", "--eval-windows", "8", "--timeout", "150"]


def _run_demo(tmp_path: Path, *extra: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """Run ``fedprune demo`` at the small sizes; return its output folder and the finished process."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "fedprune.cli", "demo", *SMALL, *extra, "--out", str(out)],
        cwd=tmp_path,
        env=_environment(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result


def _coordinator_run_section(out: Path) -> dict[str, object]:
    config = out / "service" / "configs" / "coordinator.toml"
    return tomllib.loads(config.read_text(encoding="utf-8"))["run"]


@pytest.mark.slow
def test_demo_runs_the_service_and_writes_the_table_checkpoint_report_and_page(tmp_path: Path) -> None:
    out, result = _run_demo(tmp_path)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["settings"]["recipe"], summary["settings"]["method"]) == ("fedprllm", "wanda")
    run = _coordinator_run_section(out)
    assert (run["recipe"], run["method"]) == ("fedprllm", "wanda")
    assert "recipe: fedprllm" in result.stdout
    assert set(summary["perplexity"]) == {key for key, _, _ in ROWS}
    assert all(value > 1 for value in summary["perplexity"].values())
    assert summary["sparsity"]["reached"] == pytest.approx(0.5, abs=0.01)
    assert summary["report"]["verified"] is True
    assert len(summary["report"]["site_statements"]) == 3
    assert any("Record-level differential privacy" in s for s in summary["guarantees"])
    for phase in ("model", "data", "certificates and configs", "federated run (service)", "evaluation"):
        assert phase in summary["phases"]
    # One progress line per site and block event, then the table.
    assert math.isfinite(summary["perplexity"]["federated_no_privacy"])
    for line in (
        "site-1      joined",
        "block 1/",
        "federated, no privacy",
        "private federated",
        "time of each phase",
    ):
        assert line in result.stdout
    # The checkpoint loads with plain transformers.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.model_type == "llama"
    page = (out / "summary.html").read_text(encoding="utf-8")
    assert "<svg" in page and "private federated" in page and "Privacy report" in page
    assert external_references(page) == []
    # The report's signing key is not in the output folder.
    assert not list(out.rglob("*signing.key*"))
    assert (out / "service" / "configs" / "coordinator.toml").is_file()
    assert _processes_naming(str(out)) == []


@pytest.mark.slow
def test_demo_with_the_fedspallm_recipe_runs_sparsegpt_in_the_service_and_the_baselines(
    tmp_path: Path,
) -> None:
    out, result = _run_demo(tmp_path, "--recipe", "fedspallm")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["settings"]["recipe"], summary["settings"]["method"]) == ("fedspallm", "sparsegpt")
    run = _coordinator_run_section(out)
    assert (run["recipe"], run["method"], run["mode"]) == ("fedspallm", "sparsegpt", "one-shot")
    assert set(summary["perplexity"]) == {key for key, _, _ in ROWS}
    assert all(value > 1 for value in summary["perplexity"].values())
    assert summary["sparsity"]["reached"] == pytest.approx(0.5, abs=0.01)
    assert summary["report"]["verified"] is True
    assert len(summary["report"]["site_statements"]) == 3
    # The signed report states what the weight sums add; the summary repeats it.
    report = json.loads(Path(summary["report"]["path"]).read_text(encoding="utf-8"))
    assert any(text.startswith("fedspallm:") for text in report["exclusions"])
    assert any("kept weights' updates" in sentence for sentence in summary["guarantees"])
    assert "recipe: fedspallm" in result.stdout and "SparseGPT" in result.stdout
    assert "weight updates summed under secure aggregation" in result.stdout
    page = (out / "summary.html").read_text(encoding="utf-8")
    assert "SparseGPT" in page and "Wanda" not in page.split("<div class='report'>")[0]
    assert _processes_naming(str(out)) == []


@pytest.mark.slow
def test_interrupting_the_demo_stops_every_process_it_started(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    log = tmp_path / "demo.log"
    with log.open("w", encoding="utf-8") as handle:
        demo = subprocess.Popen(
            [sys.executable, "-m", "fedprune.cli", "demo", *SMALL, "--out", str(out)],
            cwd=tmp_path,
            env=_environment(tmp_path / "cache"),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 90
            while "started the coordinator" not in log.read_text(encoding="utf-8"):
                assert demo.poll() is None, log.read_text(encoding="utf-8")
                assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
                time.sleep(0.1)
            time.sleep(1.0)  # the processes are importing or joining
            assert _processes_naming(str(out)), "the demo started no process"
            demo.send_signal(signal.SIGINT)
            assert demo.wait(timeout=30) == 130
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait(timeout=10)
    output = log.read_text(encoding="utf-8")
    assert "interrupted; stopped every process it started" in output
    assert f"Partial output in {out}" in output
    deadline = time.monotonic() + 10
    while _processes_naming(str(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_naming(str(out)) == []
