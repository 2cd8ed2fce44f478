"""What a site accepts as a block's published weights (the statistics recipe with SparseGPT).

A coordinator that lies at the wire level can send any bytes as a block's weights; the site sets them
into its model and computes the next block's statistics on them, so it checks them first against its own
model and the block's global mask: framing and digest, file format, names, shapes, dtype, finiteness and
zeros where the mask prunes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from participant.client import StreamTooLargeError, collect_weights_stream
from participant.config import ParticipantConfig
from privacy.errors import PrivacyError
from privacy.secagg import ContradictoryViewError
from proto import convert
from proto.fedprune.v1 import service_pb2 as pb
from pruning.adapters import decoder_blocks, linear_sublayers, qualified_name
from pruning.layout import VoteLayout
from tests.participant.test_participant_run import _participant, _reply, _run, site  # noqa: F401


def _joined(site: Callable[..., ParticipantConfig]) -> tuple[Any, Any, VoteLayout]:  # noqa: F811
    config = site()
    reply = _reply(config)
    participant, client = _participant(config, reply)
    participant.params = _run(reply)
    layout = VoteLayout.for_block(participant.model, 0)
    return participant, client, layout


def _publish(client: Any, layout: VoteLayout, mask: dict[str, torch.Tensor]) -> None:
    bits = layout.flatten(mask).numpy().astype(np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()

    def block_mask(request: pb.BlockMaskRequest, *, max_bytes: int) -> list[pb.BlockMaskChunk]:
        return [
            pb.BlockMaskChunk(
                block=0,
                packed=packed,
                bit_count=layout.dimension,
                layout_fingerprint=layout.fingerprint(),
                digest=hashlib.sha256(packed).digest(),
                last=True,
            )
        ]

    client.block_mask = block_mask


def _serve_weights(client: Any, data: bytes, *, chunk_bytes: int = 1 << 20, **lie: Any) -> list[int]:
    asked: list[int] = []

    def block_weights(request: pb.BlockWeightsRequest, *, max_bytes: int) -> list[pb.BlockWeightsChunk]:
        asked.append(max_bytes)
        chunks = convert.block_weights_to_chunks(convert.block_weights_of(0, data), chunk_bytes=chunk_bytes)
        for field, value in lie.items():
            setattr(chunks[-1], field, value)
        return chunks

    client.block_weights = block_weights
    return asked


def _honest(participant: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return a mask pruning every other weight of block 0 and SparseGPT-like weights under it."""
    sublayers = linear_sublayers(decoder_blocks(participant.model)[0])
    masks, weights = {}, {}
    for name, sublayer in sublayers.items():
        key = qualified_name(0, name)
        weight = sublayer.weight().detach().clone() * 1.5  # reconstructed: every kept weight moved
        mask = torch.zeros(weight.shape, dtype=torch.bool)
        mask.view(-1)[::2] = True
        weight[mask] = 0
        masks[key], weights[key] = mask, weight.contiguous()
    return masks, weights


def test_the_published_weights_are_taken_when_they_fit_the_block_and_its_mask(
    site: Callable[..., ParticipantConfig],  # noqa: F811
) -> None:
    participant, client, layout = _joined(site)
    masks, weights = _honest(participant)
    _publish(client, layout, masks)
    asked = _serve_weights(client, save_safetensors(weights), chunk_bytes=1000)  # many chunks
    taken = participant._weights(0)
    assert taken.keys() == weights.keys()
    for name, weight in weights.items():
        assert torch.equal(taken[name], weight)
    # The stream is bounded by the block's own size, from the site's model: the tensors plus a header.
    tensor_bytes = sum(w.numel() * w.element_size() for w in weights.values())
    assert tensor_bytes < asked[0] <= tensor_bytes + 65536 + 512 * len(weights)


def _variants(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    first = next(iter(weights))
    nonzero = dict(weights)
    nonzero[first] = weights[first].clone()
    nonzero[first][masks[first]] = 1e-3  # a weight the mask prunes, kept
    not_finite = dict(weights)
    not_finite[first] = weights[first].clone()
    not_finite[first][~masks[first]] = float("nan")
    other_dtype = {
        name: w.to(torch.float64 if w.dtype != torch.float64 else torch.float32)
        for name, w in weights.items()
    }
    wrong_shape = dict(weights)
    wrong_shape[first] = weights[first][:, :-1].contiguous()
    missing = {name: w for name, w in weights.items() if name != first}
    renamed = dict(missing)
    renamed["blocks.0.extra"] = weights[first]
    return {
        "nonzero-under-mask": {
            "tensors": nonzero,
            "match": "nonzero weight where the block's global mask prunes",
        },
        "not-finite": {"tensors": not_finite, "match": "not finite"},
        "other-dtype": {"tensors": other_dtype, "match": "this site's matrix is"},
        "wrong-shape": {"tensors": wrong_shape, "match": "this site's matrix is"},
        "missing-matrix": {"tensors": missing, "match": "differ from the block's own"},
        "renamed-matrix": {"tensors": renamed, "match": "differ from the block's own"},
    }


@pytest.mark.parametrize(
    "lie",
    ["nonzero-under-mask", "not-finite", "other-dtype", "wrong-shape", "missing-matrix", "renamed-matrix"],
)
def test_weights_that_do_not_fit_the_block_or_its_mask_are_a_coordinator_s_lie(
    site: Callable[..., ParticipantConfig],  # noqa: F811
    lie: str,
) -> None:
    participant, client, layout = _joined(site)
    masks, weights = _honest(participant)
    _publish(client, layout, masks)
    variant = _variants(weights, masks)[lie]
    _serve_weights(client, save_safetensors(variant["tensors"]))
    with pytest.raises(ContradictoryViewError, match=variant["match"]) as refused:
        participant._weights(0)
    assert refused.value.check == "block-weights"


def test_bytes_that_are_no_safetensors_file_are_refused(site: Callable[..., ParticipantConfig]) -> None:  # noqa: F811
    participant, client, layout = _joined(site)
    masks, _ = _honest(participant)
    _publish(client, layout, masks)
    # A header length far past the bytes, then garbage.
    _serve_weights(client, (1 << 40).to_bytes(8, "little") + b"{not json")
    with pytest.raises(ContradictoryViewError, match="not a safetensors file"):
        participant._weights(0)


@pytest.mark.parametrize("lie", ["digest", "size", "unclosed"])
def test_a_corrupted_or_unfinished_weights_stream_is_refused(
    site: Callable[..., ParticipantConfig],  # noqa: F811
    lie: str,
) -> None:
    participant, client, layout = _joined(site)
    masks, weights = _honest(participant)
    _publish(client, layout, masks)
    data = save_safetensors(weights)
    tampered = {
        "digest": {"digest": b"\x00" * 32},
        "size": {"total_bytes": len(data) + 1},
        "unclosed": {"last": False},
    }
    _serve_weights(client, data, **tampered[lie])
    with pytest.raises(PrivacyError, match="arrived incomplete or corrupted"):
        participant._weights(0)


def test_chunks_out_of_order_or_of_another_block_read_as_incomplete() -> None:
    data = bytes(range(256)) * 40
    chunks = convert.block_weights_to_chunks(convert.block_weights_of(3, data), chunk_bytes=1000)
    assert convert.block_weights_from_chunks(3, chunks).data == data
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    assert not convert.block_weights_from_chunks(3, swapped).complete
    assert not convert.block_weights_from_chunks(4, chunks).complete
    assert not convert.block_weights_from_chunks(3, []).complete


def test_a_weights_stream_longer_than_the_block_is_cut_at_its_bound() -> None:
    chunks = convert.block_weights_to_chunks(convert.block_weights_of(0, b"x" * 5000), chunk_bytes=1000)
    seen: list[int] = []

    def stream() -> Any:
        for chunk in chunks:
            seen.append(int(chunk.chunk_index))
            yield chunk

    with pytest.raises(StreamTooLargeError, match="more than the 2500 bytes"):
        collect_weights_stream(stream(), max_bytes=2500)
    assert seen == [0, 1, 2]  # never read past the first chunk over the bound
    assert len(collect_weights_stream(iter(chunks), max_bytes=5000)) == 5
