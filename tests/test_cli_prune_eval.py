"""``fedprune prune`` and ``fedprune eval`` as a user runs them: checkpoints, tables, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedprune.cli import main
from pruning.local import prune_model
from pruning.masks import parse_pattern
from pruning.methods import Method
from pruning.model_io import load_model, save_model
from tests.tiny import build_word_tokenizer, random_ids, random_text, write_input_ids


def _saved_weight(model, name: str) -> torch.Tensor:
    from pruning.adapters import iter_prunable, qualified_name

    for block_index, sub_name, sublayer in iter_prunable(model):
        if qualified_name(block_index, sub_name) == name:
            return sublayer.weight()
    raise KeyError(name)


@pytest.mark.parametrize("architecture", ["llama", "opt", "gpt2"])
def test_saved_checkpoint_loads_with_plain_transformers_and_is_zero_where_masked(
    architecture: str, model_dir, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    source = model_dir(architecture)
    model = load_model(source)
    masks: dict[str, torch.Tensor] = {}
    prune_model(
        model,
        random_ids(4, 16),
        method=Method.WANDA,
        pattern=parse_pattern("unstructured", 0.5),
        device=torch.device("cpu"),
        progress=False,
        on_decision=lambda name, decision: masks.__setitem__(name, decision.pruned.clone()),
    )
    out = save_model(model, build_word_tokenizer(), tmp_path / "pruned")
    assert any(out.glob("*.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, mask in masks.items():
        weight = _saved_weight(reloaded, name)
        assert torch.all(weight[mask] == 0), name
        assert torch.all(weight[~mask] != 0), f"{name}: a kept weight is zero"
    # Everything outside the decoder blocks is untouched.
    original = AutoModelForCausalLM.from_pretrained(source)
    assert torch.equal(reloaded.get_input_embeddings().weight, original.get_input_embeddings().weight)


def test_prune_cli_writes_checkpoint_table_and_tokenizer(model_dir, tmp_path: Path, capsys) -> None:
    source = model_dir("qwen2")
    data = tmp_path / "calibration.txt"
    data.write_text(random_text(2000), encoding="utf-8")
    out = tmp_path / "out"
    code = main(
        [
            "prune",
            "--model",
            str(source),
            "--data",
            str(data),
            "--sparsity",
            "0.5",
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "blocks.0.self_attn.q_proj" in printed and "total" in printed
    table = json.loads((out / "sparsity.json").read_text())
    assert table["total"]["sparsity"] == pytest.approx(0.5)
    assert all(row["sparsity"] == pytest.approx(0.5) for row in table["matrices"])
    assert (out / "tokenizer.json").is_file()
    # The pruned model evaluates, and its perplexity is written as JSON.
    result = tmp_path / "ppl.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--data",
                str(data),
                "--seqlen",
                "32",
                "--json",
                str(result),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    record = json.loads(result.read_text())
    assert record["perplexity"] > 1 and record["windows"] == 2000 // 32 or record["windows"] > 0


def test_same_seed_same_model_other_seed_other_model(model_dir, tmp_path: Path) -> None:
    source = model_dir("llama")
    data = tmp_path / "calibration.txt"
    data.write_text(random_text(3000), encoding="utf-8")

    def run(seed: int, name: str) -> dict:
        main(
            [
                "prune",
                "--model",
                str(source),
                "--data",
                str(data),
                "--sparsity",
                "0.6",
                "--nsamples",
                "2",
                "--seqlen",
                "16",
                "--seed",
                str(seed),
                "--out",
                str(tmp_path / name),
                "--no-progress",
            ]
        )
        return load_model(tmp_path / name).state_dict()

    first, again, other = run(0, "a"), run(0, "b"), run(5, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_input_ids_jsonl_is_used_as_is(model_dir, tmp_path: Path) -> None:
    from pruning.data import calibration_samples

    rows = random_ids(5, 12).tolist()
    path = write_input_ids(tmp_path / "ids.jsonl", rows)
    samples = calibration_samples(path, None, nsamples=3, seqlen=999, seed=0, vocab_size=96)
    assert samples.tolist() == rows[:3]


def test_eval_perplexity_is_exp_mean_token_nll(model_dir, tmp_path: Path) -> None:
    from pruning.perplexity import perplexity

    model = load_model(model_dir("llama"))
    stream = random_ids(1, 100).reshape(-1)
    result = perplexity(model, stream, seqlen=30, device=torch.device("cpu"))
    windows = stream[:90].reshape(3, 30)
    with torch.no_grad():
        logits = model(input_ids=windows).logits
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
    )
    assert result.windows == 3 and result.predicted_tokens == 87
    assert result.perplexity == pytest.approx(float(nll.exp()), rel=1e-5)


def _error_of(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_get_one_line_errors(model_dir, tmp_path: Path, capsys) -> None:
    source = model_dir("llama", intermediate=36)
    good = write_input_ids(tmp_path / "good.jsonl", random_ids(2, 8).tolist())
    base = ["prune", "--model", str(source), "--data", str(good), "--sparsity", "0.5", "--no-progress"]

    def out(name: str) -> list[str]:
        return ["--out", str(tmp_path / name)]

    assert "does not exist" in _error_of(
        ["prune", "--model", str(tmp_path / "nope"), "--sparsity", "0.5", "--data", str(good)] + out("o1"),
        capsys,
    )
    (tmp_path / "notmodel").mkdir()
    assert "not a model directory" in _error_of(
        ["prune", "--model", str(tmp_path / "notmodel"), "--sparsity", "0.5", "--data", str(good)]
        + out("o2"),
        capsys,
    )
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"")
    assert "unsupported architecture 'bert'" in _error_of(
        ["prune", "--model", str(bert), "--sparsity", "0.5", "--data", str(good)] + out("o3"), capsys
    )
    short = tmp_path / "short.txt"
    short.write_text("w1 w2 w3", encoding="utf-8")
    assert "fewer than one window" in _error_of(
        ["prune", "--model", str(source), "--data", str(short), "--sparsity", "0.5", "--seqlen", "16"]
        + out("o4"),
        capsys,
    )
    ragged = tmp_path / "ragged.jsonl"
    ragged.write_text('{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 2]}\n', encoding="utf-8")
    assert "different lengths" in _error_of(base[:4] + [str(ragged)] + base[5:] + out("o5"), capsys)
    outside = write_input_ids(tmp_path / "outside.jsonl", [[1, 2, 96], [3, 4, 5]])
    assert "outside the vocabulary" in _error_of(base[:4] + [str(outside)] + base[5:] + out("o6"), capsys)
    too_long = write_input_ids(tmp_path / "long.jsonl", [[1] * 65, [2] * 65])
    assert "context length 64" in _error_of(base[:4] + [str(too_long)] + base[5:] + out("o6b"), capsys)
    assert "context length 64" in _error_of(base + ["--seqlen", "100"] + out("o6c"), capsys)
    for bad in ("0", "1", "1.5", "-0.1"):
        assert "between 0 and 1" in _error_of(base[:6] + [bad] + base[7:] + out("o7"), capsys)
    assert "multiple of 8" in _error_of(base[:5] + ["--pattern", "4:8"] + base[7:] + out("o8"), capsys)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    assert "not empty" in _error_of(base + ["--out", str(busy)], capsys)
    assert main(base + ["--out", str(busy), "--overwrite"]) == 0
    assert "needs calibration data" in _error_of(
        ["prune", "--model", str(source), "--sparsity", "0.5"] + out("o9"), capsys
    )
    assert "unknown method" in _error_of(base + ["--method", "random"] + out("o10"), capsys)
    assert (
        main(
            ["prune", "--model", str(source), "--sparsity", "0.5", "--method", "magnitude", "--no-progress"]
            + out("o11")
        )
        == 0
    )
