"""The statistics recipe with SparseGPT over the service's own transport: gRPC and mutual TLS on loopback.

The sites fetch each finished block's reconstructed weights (``BlockWeights``) before computing the next
block's Hessian; the written model holds exactly those weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import torch

from pruning.adapters import decoder_blocks, linear_sublayers, qualified_name
from pruning.model_io import load_model
from tests.integration.live import live_coordinator, make_live_federation, run_participants


@pytest.mark.slow
def test_a_sparsegpt_statistics_run_publishes_each_block_s_weights_and_writes_them(tmp_path: Path) -> None:
    federation = make_live_federation(tmp_path / "live", layers=3)
    run = {"recipe": "stats", "method": "sparsegpt", "mode": "iterative", "sparsity": 0.5}
    with live_coordinator(federation, "stats-sparsegpt", run) as coordinator:
        # Only a member fetches weights (site-a has not joined yet).
        assert _fetch_weights(coordinator, "site-a", 0) is grpc.StatusCode.PERMISSION_DENIED
        run_participants(coordinator)
        assert _fetch_weights(coordinator, "site-a", 0) is grpc.StatusCode.OK
        assert _fetch_weights(coordinator, "site-a", 3) is grpc.StatusCode.INVALID_ARGUMENT  # no block 3
        assert _fetch_weights(coordinator, "outsider", 0) is not grpc.StatusCode.OK
        output = coordinator.run.config.output.directory
        report = json.loads((output / "privacy_report.json").read_text(encoding="utf-8"))
        sessions = [e["event"] for e in report["ledger"] if e["event"]["mechanism"] == "secure_aggregation"]
        assert [e["parameters"]["summed"] for e in sessions] == ["gram_statistics"] * 3
        state = coordinator.run.state
        base = load_model(federation.model)
        pruned = load_model(output)
        for index, (block, base_block) in enumerate(
            zip(decoder_blocks(pruned), decoder_blocks(base), strict=True)
        ):
            from safetensors.torch import load as load_safetensors

            published = load_safetensors(state.block_weights(index))
            base_sublayers = linear_sublayers(base_block)
            for name, sublayer in linear_sublayers(block).items():
                weight = sublayer.weight()
                assert torch.equal(weight, published[qualified_name(index, name)])
                kept = weight != 0
                assert int((~kept).sum()) == weight.numel() // 2
                # Reconstructed: kept weights moved away from the base weights.
                assert not torch.equal(weight[kept], base_sublayers[name].weight()[kept])


def _fetch_weights(coordinator: object, caller: str, block: int) -> grpc.StatusCode:
    from proto.fedprune.v1 import service_pb2 as pb
    from proto.fedprune.v1 import service_pb2_grpc

    run_id = bytes.fromhex(coordinator.run.run_id)  # type: ignore[attr-defined]
    with coordinator.channel(caller) as channel:  # type: ignore[attr-defined]
        stub = service_pb2_grpc.CoordinatorStub(channel)
        try:
            list(stub.BlockWeights(pb.BlockWeightsRequest(run_id=run_id, block=block), timeout=10))
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_a_run_that_reconstructs_no_weights_publishes_none(tmp_path: Path) -> None:
    federation = make_live_federation(tmp_path / "live", layers=2)
    run = {"recipe": "stats", "method": "wanda", "mode": "iterative"}
    with live_coordinator(federation, "stats-wanda", run) as coordinator:
        run_participants(coordinator)
        # Finished blocks, but their weights are the base weights under the mask: nothing is served.
        assert _fetch_weights(coordinator, "site-a", 0) is grpc.StatusCode.INVALID_ARGUMENT
