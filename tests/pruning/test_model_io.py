"""Loading a checkpoint: in the dtype its weights are stored in, from any number of threads at once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from pruning.errors import PruningInputError
from pruning.layout import base_model_fingerprint
from pruning.model_io import check_dtype, checkpoint_dtype, load_model
from tests.tiny import build_tiny_model

THREADS = 8
ROUNDS = 3


def _save(path: Path, dtype: torch.dtype, *, declared: str | None = None) -> torch.nn.Module:
    model = build_tiny_model("llama", dtype=dtype)
    model.save_pretrained(path)
    if declared is not None:  # a config.json that says another dtype than the weight files store
        config_file = path / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["dtype"] = declared
        config_file.write_text(json.dumps(config), encoding="utf-8")
    return model


def _dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
    return {name: tensor.dtype for name, tensor in model.state_dict().items()}


def _load_at_once(path: Path) -> list[torch.nn.Module | BaseException | None]:
    """Return what ``load_model(path)`` gave in each of THREADS threads released together."""
    start = threading.Barrier(THREADS)
    loaded: list[torch.nn.Module | BaseException | None] = [None] * THREADS

    def load(index: int) -> None:
        start.wait()
        try:
            loaded[index] = load_model(path)
        except BaseException as error:  # noqa: BLE001 - asserted on by the caller, in the test's thread
            loaded[index] = error

    threads = [threading.Thread(target=load, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return loaded


def test_loads_from_many_threads_at_once_all_give_the_stored_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # transformers sets torch's process-wide default dtype while it builds the model. A short sleep in
    # every change makes the threads' loads interleave on every run instead of now and then.
    original = torch.set_default_dtype

    def slow_set_default_dtype(dtype: torch.dtype) -> None:
        original(dtype)
        time.sleep(0.002)

    monkeypatch.setattr(torch, "set_default_dtype", slow_set_default_dtype)
    stored = _save(tmp_path, torch.float16)
    expected = base_model_fingerprint(stored)
    for _ in range(ROUNDS):
        loaded = _load_at_once(tmp_path)
        for model in loaded:
            assert isinstance(model, torch.nn.Module), model
            wrong = {name: dtype for name, dtype in _dtypes(model).items() if dtype != torch.float16}
            assert not wrong
            assert base_model_fingerprint(model) == expected
        assert torch.get_default_dtype() == torch.float32  # and the process's default is left as it was


def test_a_default_dtype_changed_during_the_load_is_refused_naming_the_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Code outside the loading lock resets the default to float32 just as transformers sets float16.
    original = torch.set_default_dtype
    monkeypatch.setattr(torch, "set_default_dtype", lambda dtype: original(torch.float32))
    _save(tmp_path, torch.float16)
    with pytest.raises(
        PruningInputError, match=r"loaded model\.\S+ as torch\.float32, not the checkpoint's torch\.float16"
    ):
        load_model(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_weights_load_as_stored_whatever_the_config_declares(tmp_path: Path, dtype: torch.dtype) -> None:
    other = "float32" if dtype != torch.float32 else "float16"
    stored = _save(tmp_path, dtype, declared=other)
    assert checkpoint_dtype(tmp_path) == dtype
    model = load_model(tmp_path)
    assert set(_dtypes(model).values()) == {dtype}
    assert base_model_fingerprint(model) == base_model_fingerprint(stored)


def test_mixed_stored_dtypes_follow_the_config_when_it_names_one_of_them(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _save(tmp_path, torch.float16)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"].float()
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert checkpoint_dtype(tmp_path) == torch.float16  # config.json says float16
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    assert checkpoint_dtype(tmp_path) == torch.float32
    del config["dtype"]
    config_file.write_text(json.dumps(config), encoding="utf-8")
    assert checkpoint_dtype(tmp_path) == torch.float16  # most elements are float16


def test_a_bad_weight_file_header_is_named(tmp_path: Path) -> None:
    _save(tmp_path, torch.float16)
    (tmp_path / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(
        PruningInputError, match=r"model\.safetensors: the safetensors header is not valid JSON"
    ):
        checkpoint_dtype(tmp_path)


def test_a_pickled_checkpoint_loads_in_its_stored_dtype(tmp_path: Path) -> None:
    stored = _save(tmp_path, torch.bfloat16, declared="float32")
    (tmp_path / "model.safetensors").unlink()
    torch.save(stored.state_dict(), tmp_path / "pytorch_model.bin")
    assert checkpoint_dtype(tmp_path) == torch.bfloat16
    assert base_model_fingerprint(load_model(tmp_path)) == base_model_fingerprint(stored)


def test_modules_an_architecture_keeps_in_float32_are_not_a_wrong_dtype() -> None:
    model = torch.nn.Module()
    model.kept = torch.nn.Linear(2, 2)  # float32, as transformers keeps e.g. a router or a norm
    model.body = torch.nn.Linear(2, 2).to(torch.float16)
    with pytest.raises(PruningInputError, match="kept.weight"):
        check_dtype(model, torch.float16, where="m")
    model._keep_in_fp32_modules = ["kept"]
    check_dtype(model, torch.float16, where="m")  # accepted: the float32 module is on purpose
    model.body.to(torch.float32)
    with pytest.raises(PruningInputError, match="body.weight"):
        check_dtype(model, torch.float16, where="m")
