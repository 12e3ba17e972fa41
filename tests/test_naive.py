"""The naive yardstick's fast forward (K^T made once, one head of a group at a time) gives the very bits of the
plain broadcast formula: the 2x-naive limit of every verdict is what it was."""
import numpy as np
import pytest
import torch

from attnbench import naive
from attnbench.problem import Problem, make_inputs

PROBLEMS = [
    "B=2,H=6,Hkv=2,N=37,M=300,D=24,causal=bottom_right,softcap=20,alibi=batch,sinks=1",
    "B=1,H=4,Hkv=1,N=16,M=2049,D=64,window=100:0",
    "B=2,H=3,Hkv=3,N=20,M=70,D=16,mask=bias",
    "B=1,H=8,Hkv=1,N=3,M=3000,D=128",       # one row (a GEMV), G 8, D 128: where float32 took another order
    "B=2,H=4,Hkv=2,N=2,M=517,D=64,sinks=1",
    "B=2,H=6,Hkv=3,N=9,M=1200,D=111",       # odd D, G 2, B x Hkv 6 GEMMs: Q K^T of G R rows at once
]


def _broadcast(inputs, problem, rows):
    """O (B, H, R, Dv) of `naive._plain` as written before: Q K^T and P V broadcast over the group."""
    p = problem
    k, v = naive._tensor(inputs.k, p.dtype).unsqueeze(2), naive._tensor(inputs.v, p.dtype).unsqueeze(2)
    with torch.no_grad():
        outs = [_plain_chunk(inputs, p, chunk, k, v) for chunk in naive._chunks(p, rows, naive.FORWARD_CHUNK_ELEMENTS)]
    return torch.cat(outs, dim=3).reshape(p.B, p.H, len(rows), p.Dv).double().numpy()


def _plain_chunk(inputs, p, chunk, k, v):
    q, scale, mods = naive._operands(inputs, p, chunk)
    return naive._plain(q, k, v, scale, **mods)


@pytest.mark.parametrize("spec, dtype", [(spec, dtype) for spec in PROBLEMS for dtype in ("float16", "bfloat16")]
                         + [(PROBLEMS[3], "float32")])          # float32 keeps the broadcast formula: dispatch
def test_the_per_head_forward_gives_the_bits_of_the_broadcast_formula(spec, dtype):
    problem = Problem.parse(f"{spec},dtype={dtype}")
    inputs = make_inputs(problem)
    rows = np.arange(0, problem.N, 3)
    assert np.array_equal(naive.naive_forward(inputs, problem, rows), _broadcast(inputs, problem, rows),
                          equal_nan=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_q_k_transposed_in_column_chunks_gives_the_bits_of_one_call(monkeypatch, dtype):
    """K^T past GEMM_COLUMN_BYTES is multiplied a chunk of keys at a time (torch's float16 CPU matmul takes
    minutes past 2 GiB): the same bits as one call."""
    problem = Problem.parse(f"{PROBLEMS[1]},dtype={dtype}")
    inputs = make_inputs(problem)
    rows = np.arange(0, problem.N, 3)
    whole = naive.naive_forward(inputs, problem, rows)
    monkeypatch.setattr(naive, "GEMM_COLUMN_BYTES", 2 * 64 * 100)         # 100 keys of D 64 a GEMM
    assert np.array_equal(naive.naive_forward(inputs, problem, rows), whole, equal_nan=True)
