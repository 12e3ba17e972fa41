"""Pad-and-mask: any dense backend that takes bool masks runs ragged and paged problems, declared as such.

The adapter reads the layout's physical storage the way the layout defines it (`attnbench.reference.layouts.
logical_view`: packed rows by cu_seqlens, pages through the block table, appended keys after each cache), pads
every sequence into the dense (B, H, N, D) / (B, Hkv, M, D) view, right-aligned so that each sequence's
bottom-right causal rule, window and ALiBi distance stay its own, and hands the backend that dense problem with a
bool mask (B, 1, N, M) keeping each sequence's own keys. Padding query rows keep every key (their results are
dropped) so they never make an empty row the backend must handle; `run.physical` gathers the results of the
sequences' rows back into the physical shapes (packed (total_q, H, Dv) for ragged queries). It costs the
padding: B N M scores where the layout has sum N_b M_b, which is why kernels read layouts natively; the math is
the same (masked keys weigh exactly 0).

A backend's `why_not` names the route ("kv=ragged via pad-and-mask: ..."); `Capabilities.kv_layouts` lists what
a backend reads natively instead (`torch_blockwise`).
"""
from __future__ import annotations

import numpy as np

from attnbench.problem import Inputs, Problem
from attnbench.reference import layouts as kv_layouts


def dense_problem(p: Problem) -> Problem:
    """The dense problem the adapter runs for layout problem `p`: same shapes, a bool mask where sequences are
    shorter than the view."""
    rows, cols = kv_layouts.valid(p)
    return p.replace(kv="dense", append=0, mask=None if rows.all() and cols.all() else "bool")


def dense_mask(p: Problem) -> np.ndarray | None:
    """Bool (B, 1, N, M): a sequence's rows see its own keys, padding rows see every key (dropped anyway)."""
    rows, cols = kv_layouts.valid(p)
    if rows.all() and cols.all():
        return None
    return (~rows[:, :, None] | cols[:, None, :])[:, None]


def dense_inputs(inputs: Inputs, p: Problem) -> Inputs:
    """The padded dense view of `inputs.kv` as plain dense inputs."""
    q, k, v = kv_layouts.logical_view(inputs.kv, p)
    return Inputs(q, k, v, dense_mask(p), inputs.mods)


def prepare_padded(prepare_dense, inputs: Inputs, problem: Problem, *args, device: str = "cpu",
                   need_grad: bool = False, **kwargs):
    """`prepare` (or, with need_grad, `prepare_backward(inputs, problem, grad_out)`, dO in the physical shape of O)
    of a layout problem through the backend's dense `prepare_dense`. The callable returns the backend's own dense
    results (its array type, dtype, device and memory layout, which the call's contract checks);
    `run.physical(name, array)` maps one, as float64 NumPy (`backend.to_numpy`), to the layout's physical shape."""
    p, dense = problem, dense_problem(problem)
    if need_grad:
        (grad_out,) = args
        padded = kv_layouts.to_logical(p, "out", np.asarray(grad_out))        # zeros in padding rows
        run = prepare_dense(dense_inputs(inputs, p), dense, padded, device=device)
    else:
        run = prepare_dense(dense_inputs(inputs, p), dense, device=device, **kwargs)

    dense_shapes = dict(out=(p.B, p.H, p.N, p.Dv), lse=(p.B, p.H, p.N), dq=(p.B, p.H, p.N, p.D),
                        dk=(p.B, p.Hkv, p.M, p.D), dv=(p.B, p.Hkv, p.M, p.Dv))

    def physical(name: str, x: np.ndarray) -> np.ndarray:
        if x.shape != dense_shapes[name]:            # a wrong shape stays as it is: the contract reports it
            return x
        return kv_layouts.keys_to_physical(p, x) if name in ("dk", "dv") else kv_layouts.to_physical(p, name, x)

    run.physical, run.via = physical, "pad-and-mask"
    return run
