"""Time and peak memory of local pruning, per method, on a Llama-architecture model built here.

Each method runs in its own subprocess so its peak resident memory (and peak CUDA memory on a GPU) is its
own. The model is random-initialised (no download); its size is set by the options. Prints a table, or one
JSON object with --json.

    python bench/prune_local.py [--hidden 1024 --layers 8 --nsamples 32 --seqlen 512 --device auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = ("magnitude", "wanda", "sparsegpt")


def _build_model(path: Path, args: argparse.Namespace) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=max(2048, args.seqlen),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def _measure(model_dir: str, method: str, nsamples: int, seqlen: int, device: str) -> dict[str, float]:
    import resource
    import time

    import torch

    from pruning.calibration import resolve_device
    from pruning.local import prune_model
    from pruning.masks import parse_pattern
    from pruning.methods import Method
    from pruning.model_io import load_model

    resolved = resolve_device(device)
    model = load_model(model_dir)
    samples = torch.randint(
        0, model.config.vocab_size, (nsamples, seqlen), generator=torch.Generator().manual_seed(0)
    )
    if resolved.type == "cuda":
        torch.cuda.reset_peak_memory_stats(resolved)
        torch.cuda.synchronize(resolved)
    started = time.perf_counter()
    prune_model(
        model,
        samples,
        method=Method(method),
        pattern=parse_pattern("unstructured", 0.5),
        device=resolved,
        progress=False,
    )
    if resolved.type == "cuda":
        torch.cuda.synchronize(resolved)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if resolved.type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(resolved)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--_child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(_measure(args._child[0], args._child[1], args.nsamples, args.seqlen, args.device)))
        return 0
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        parameters = _build_model(model_dir, args)
        results = {}
        for method in args.methods.split(","):
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_child",
                    str(model_dir),
                    method,
                    "--nsamples",
                    str(args.nsamples),
                    "--seqlen",
                    str(args.seqlen),
                    "--device",
                    args.device,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            results[method] = json.loads(child.stdout.strip().splitlines()[-1])
    report = {
        "model": {
            "architecture": "llama",
            "hidden": args.hidden,
            "layers": args.layers,
            "parameters": parameters,
        },
        "calibration": {"nsamples": args.nsamples, "seqlen": args.seqlen},
        "device": args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
        "torch_threads": torch.get_num_threads(),
        "methods": results,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"llama {parameters / 1e6:.1f}M parameters ({args.layers} blocks, hidden {args.hidden}), "
        f"{args.nsamples} x {args.seqlen} calibration tokens, device {report['device']}, "
        f"{report['torch_threads']} threads"
    )
    print(f"{'method':<10} {'seconds':>9} {'peak RSS MiB':>13} {'peak CUDA MiB':>14}")
    for method, r in results.items():
        cuda = f"{r['peak_cuda_bytes'] / 2**20:14.0f}" if "peak_cuda_bytes" in r else f"{'-':>14}"
        print(f"{method:<10} {r['seconds']:9.2f} {r['peak_rss_bytes'] / 2**20:13.0f} {cuda}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
