"""Benchmark: one full secure-aggregation session in one process, with figures, printed, never asserted.

Run: ``python bench/secagg.py --coordinates D --participants N [--json]``. Every participant runs the
real protocol (keys, envelopes, masks, packing) in turn; participant 1's masking of its whole vector is
timed alone (one core, one thread), as is the server's unmasking. The same run measures this machine's
raw AES-128-CTR keystream rate: n keystreams of one lane per coordinate is the physical limit of the
design, and the ratio to it is printed. Votes are views into one random 0/1 buffer (they are not
secrets here), built into one participant's whole vector at a time (a session binds the vector it
masks); the sum is verified chunk by chunk.
``--fedspallm`` runs the FedSpaLLM recipe's session instead: every input is a keep-vote packed with a
fixed-point weight update (``privacy.secagg.fixed_point.VoteValueCodec`` for n), in the wide ring.

Rates are coordinates per second of the timing thread's CPU time (`time.thread_time`), so that other
processes on a shared machine do not distort them; the `*_wall` keys give wall-clock rates as well.
The server's ingest rate counts coordinates of all participants' streams.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy.secagg import (  # noqa: E402
    SecAggClient,
    SecAggServer,
    SessionContext,
    SessionHistory,
    SessionParameters,
    default_threshold,
)
from privacy.secagg.driver import identity_keys_for  # noqa: E402
from privacy.secagg.fixed_point import VoteValueCodec  # noqa: E402
from privacy.secagg.messages import wire_size  # noqa: E402
from privacy.secagg.parameters import DEFAULT_CHUNK_COORDINATES, WIDE_MAX_BIT_WIDTH  # noqa: E402
from privacy.secagg.prg import DEFAULT_BLOCK_BYTES  # noqa: E402

VOTE_POOL_SLACK = 4096


def raw_aes_ctr_bytes_per_s(*, key_bytes: int = 16, total_bytes: int = 1 << 30) -> tuple[float, float]:
    """Return the best-of-3 AES-CTR keystream rate (bytes/s) on this core: (CPU time, wall clock)."""
    zeros = bytes(DEFAULT_BLOCK_BYTES)
    out = bytearray(DEFAULT_BLOCK_BYTES + 15)
    best_cpu = best_wall = float("inf")
    for _ in range(3):
        encryptor = Cipher(algorithms.AES(os.urandom(key_bytes)), modes.CTR(bytes(16))).encryptor()
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(total_bytes // DEFAULT_BLOCK_BYTES):
            encryptor.update_into(zeros, out)
        best_cpu = min(best_cpu, time.thread_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return total_bytes / best_cpu, total_bytes / best_wall


def votes_for(pool: np.ndarray, participant: int, chunk_index: int, count: int) -> np.ndarray:
    """Return participant's 0/1 votes for one chunk: a view into the shared random pool."""
    offset = (participant * 131 + chunk_index * 17) % VOTE_POOL_SLACK
    return pool[offset : offset + count]


def run(
    dimension: int,
    participants: int,
    *,
    threshold: int | None,
    chunk_coordinates: int,
    workdir: str,
    ring_headroom: bool = True,
    fedspallm: bool = False,
) -> dict[str, float]:
    """Return the figures of one session (see the module docstring)."""
    ids = tuple(range(1, participants + 1))
    codec = VoteValueCodec(participants=participants) if fedspallm else None
    wide = {} if codec is None else {"max_input": codec.max_input, "max_bit_width": WIDE_MAX_BIT_WIDTH}
    params = SessionParameters(
        participant_ids=ids,
        threshold=default_threshold(participants) if threshold is None else threshold,
        dimension=dimension,
        chunk_coordinates=chunk_coordinates,
        context=SessionContext.fresh(run_id="bench", round=0, block=0).encode(),
        ring_headroom=ring_headroom,
        **wide,  # type: ignore[arg-type]
    )
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 2, chunk_coordinates + VOTE_POOL_SLACK).astype(np.uint8)
    if codec is not None:
        updates = rng.uniform(-1.0, 1.0, pool.size)
        pool = codec.encode(updates, bound=1.0, votes=pool).inputs
    private, public = identity_keys_for(ids)
    clients = {
        p: SecAggClient(
            participant=p,
            parameters=params,
            identity_key=private[p],
            identity_keys=public,
            history=SessionHistory(),
        )
        for p in ids
    }
    server = SecAggServer(parameters=params, identity_keys=public, workdir=workdir)
    upload = dict.fromkeys(ids, 0)

    start = time.perf_counter()
    for p in ids:
        advertisement = clients[p].advertise_keys()
        upload[p] += wire_size(advertisement)
        server.receive_advertisement(advertisement)
    roster = server.close_advertisements()
    for p in ids:
        shares = clients[p].share_keys(roster)
        upload[p] += wire_size(shares)
        server.receive_shares(shares)
    for p, delivery in server.close_shares().items():
        clients[p].receive_shares(delivery)
    setup_s = time.perf_counter() - start

    client_cpu_s = client_wall_s = ingest_s = 0.0
    for p in ids:
        # One participant's whole vector at a time (a session binds the vector it masks, and hashes it
        # once to recognise it across sessions): the binding is timed with the masking.
        vector = np.concatenate(
            [votes_for(pool, p, index, params.chunk_length(index)) for index in range(params.chunk_count)]
        )
        c0, t0 = time.thread_time(), time.perf_counter()
        clients[p].bind_votes(vector)
        if p == 1:
            client_cpu_s += time.thread_time() - c0
            client_wall_s += time.perf_counter() - t0
        for index in range(params.chunk_count):
            c0, t0 = time.thread_time(), time.perf_counter()
            chunk = clients[p].masked_chunk(index)
            c1, t1 = time.thread_time(), time.perf_counter()
            server.receive_masked_chunk(chunk)
            ingest_s += time.thread_time() - c1
            if p == 1:
                client_cpu_s += c1 - c0
                client_wall_s += t1 - t0
            upload[p] += wire_size(chunk)
        done = clients[p].finish_masked_input()
        upload[p] += wire_size(done)
        server.receive_masked_done(done)

    # Consistency round: every survivor signs, the server verifies n signatures, each survivor verifies
    # the t or more it is shown. Timed as the wall-clock of the whole round (all parties in turn).
    start = time.perf_counter()
    check = server.close_masked_input()
    for p in check.survivors:
        signature = clients[p].sign_survivors(check)
        upload[p] += wire_size(signature)
        server.receive_survivor_signature(signature)
    request = server.close_signatures()
    consistency_s = time.perf_counter() - start
    responses = []
    for p in request.survivors:
        response = clients[p].unmask(request)
        upload[p] += wire_size(response)
        responses.append(response)
    start = time.perf_counter()
    for response in responses:  # includes checking every revealed share against its owner's digest
        server.receive_unmask(response)
    receive_unmask_s = time.perf_counter() - start
    start, start_wall = time.thread_time(), time.perf_counter()
    result = server.finalize()
    unmask_s, unmask_wall_s = time.thread_time() - start, time.perf_counter() - start_wall

    verified = True
    for index in range(params.chunk_count):
        count = params.chunk_length(index)
        plain = np.zeros(count, dtype=np.uint64 if codec is not None else np.uint16)
        for p in ids:
            plain += votes_for(pool, p, index, count)
        lo = index * chunk_coordinates
        verified &= bool(np.array_equal(result.keep_votes[lo : lo + count], plain))

    aes_bytes_per_s, aes_wall_bytes_per_s = raw_aes_ctr_bytes_per_s()
    lane_bytes = params.lane_dtype.itemsize
    physical_limit = aes_bytes_per_s / (participants * lane_bytes)
    client_rate = dimension / client_cpu_s
    packed = params.packed_vector_bytes()
    upload_1 = upload[1]
    return {
        "coordinates": dimension,
        "participants": participants,
        "threshold": params.threshold,
        "bit_width": params.bit_width,
        "chunk_coordinates": chunk_coordinates,
        "client_coords_per_s": client_rate,
        "client_coords_per_s_wall": dimension / client_wall_s,
        "server_coords_per_s": dimension / unmask_s,
        "server_coords_per_s_wall": dimension / unmask_wall_s,
        "server_ingest_coords_per_s": dimension * participants / ingest_s,
        "upload_bytes_per_participant": upload_1,
        "packed_vector_bytes": packed,
        "upload_overhead_bytes": upload_1 - packed,
        "upload_over_packed": upload_1 / packed,
        "bits_per_coordinate": 8 * upload_1 / dimension,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "raw_aes128_ctr_bytes_per_s": aes_bytes_per_s,
        "raw_aes128_ctr_bytes_per_s_wall": aes_wall_bytes_per_s,
        "physical_limit_coords_per_s": physical_limit,
        "ratio_to_physical_limit": client_rate / physical_limit,
        "setup_s": setup_s,
        "consistency_round_s": consistency_s,
        "receive_unmask_s": receive_unmask_s,
        "ring_headroom": ring_headroom,
        "fedspallm": fedspallm,
        "verified": verified,
    }


def main() -> None:
    """Parse arguments, run one session, print the figures (a table, or one JSON object with --json)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--coordinates", type=int, required=True, help="d, coordinates per vector")
    parser.add_argument("--participants", type=int, required=True, help="n, participants")
    parser.add_argument(
        "--threshold", type=int, default=None, help="t (default floor(2n/3)+1; must be > n/2)"
    )
    parser.add_argument("--chunk-coordinates", type=int, default=DEFAULT_CHUNK_COORDINATES)
    parser.add_argument("--workdir", default=None, help="where the server's memory-mapped accumulator lives")
    parser.add_argument(
        "--no-ring-headroom",
        action="store_true",
        help="b = ceil(log2(n+1)) instead of ceil(log2(2n+1)): the cost of the underflow-detecting bit",
    )
    parser.add_argument(
        "--fedspallm",
        action="store_true",
        help="the FedSpaLLM session: keep-votes packed with fixed-point weight updates, wide ring",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="secagg-bench-", dir=args.workdir) as workdir:
        figures = run(
            args.coordinates,
            args.participants,
            threshold=args.threshold,
            chunk_coordinates=args.chunk_coordinates,
            workdir=workdir,
            ring_headroom=not args.no_ring_headroom,
            fedspallm=args.fedspallm,
        )
    if args.json:
        print(json.dumps(figures))
        return
    f = figures
    print(
        f"secure aggregation: d={f['coordinates']:,} n={f['participants']} t={f['threshold']} "
        f"b={f['bit_width']} chunk={f['chunk_coordinates']:,} (one core)"
    )
    print(
        f"participant masking : {f['client_coords_per_s'] / 1e6:,.1f} M coords/s CPU time "
        f"({f['client_coords_per_s_wall'] / 1e6:,.1f} wall clock)"
    )
    print(
        f"raw AES-128-CTR     : {f['raw_aes128_ctr_bytes_per_s'] / 1e9:,.2f} GB/s -> physical limit "
        f"{f['physical_limit_coords_per_s'] / 1e6:,.1f} M coords/s for n keystreams; ratio "
        f"{f['ratio_to_physical_limit']:.2f}"
    )
    print(
        f"server unmasking    : {f['server_coords_per_s'] / 1e6:,.1f} M coords/s "
        f"({f['server_coords_per_s_wall'] / 1e6:,.1f} wall clock) "
        f"(ingest {f['server_ingest_coords_per_s'] / 1e6:,.1f} M coords/s)"
    )
    print(
        f"upload/participant  : {f['upload_bytes_per_participant']:,} B = d*b/8 "
        f"{f['packed_vector_bytes']:,} B + {f['upload_overhead_bytes']:,} B "
        f"({f['bits_per_coordinate']:.4f} bits/coordinate)"
    )
    print(
        f"setup / consistency : {f['setup_s']:.3f} s keys+shares (all parties), {f['consistency_round_s']:.3f} s "
        f"signed survivor set, {f['receive_unmask_s']:.3f} s checking unmask responses"
    )
    print(f"peak RSS            : {f['peak_rss_bytes'] / 2**20:,.1f} MiB   sum verified: {f['verified']}")


if __name__ == "__main__":
    main()
