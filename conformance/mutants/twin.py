"""The correct twin of every mutant: blockwise (tiled, online-softmax) attention in PyTorch.

Keys are visited in tiles of `KEY_TILE`; per query row the running max m, the
running denominator l and the unnormalised accumulator acc are updated per tile
(the FlashAttention recurrence, Triton tutorial 06 names):

    m' = max(m, rowmax(S_tile))       alpha = exp(m - m')      P_tile = exp(S_tile - m')
    l' = alpha l + rowsum(P_tile)     acc' = alpha acc + P_tile V_tile
    O  = acc / l                      lse = m + log l           (O = 0, lse = -inf where l = 0)

Half-precision inputs are computed in float32 and rounded once at the end.
Every step is a small method so a mutant overrides exactly one of them to plant
exactly one bug. The backward is autograd through the forward, routed through
`_RecordedGrad` so a mutant can corrupt the gradients the way a hand-written
backward would. Kept out of the registry: `pytest conformance --mutant twin`.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys,
D query/key dim, Dv value dim.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from attnbench.implementations import Capabilities
from attnbench.implementations.split_kv import num_splits_heuristic
from attnbench.implementations.torch_mods import SUPPORTED, TorchMods
from attnbench.precision import FLASH, FLOAT32_INTERNAL, for_half
from attnbench.implementations._torch_common import TorchBackend

KEY_TILE = 32
NEG_INF = float("-inf")
TWIN_WORKERS = 2 * 108          # FlashAttention's workers argument for an A100: 2 x its SMs


class _RecordedGrad(torch.autograd.Function):
    """Forward through `backend.blockwise` with a recorded graph; backward = `backend.gradients` (autograd), then
    `backend.corrupt_grads` (and `backend.corrupt_sink_grad` for the sink logits (H,), when they require grad)."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, backend, options):
        with torch.enable_grad():
            leaves = tuple(x.detach().requires_grad_() for x in (q, k, v))
            if sinks is not None and sinks.requires_grad:
                leaves += (sinks.detach().requires_grad_(),)
                backend.mods = replace(backend.mods, sinks=leaves[3])
            out, lse = backend.blockwise(*leaves[:3], **options)
        # The recorded graph is kept on ctx (not save_for_backward): it is replayed by backward, and holds
        # non-tensor state (the backend) that save_for_backward cannot. It is retained because gradcheck
        # replays one forward's backward several times; it is freed with ctx.
        # The call's state on the backend too (`mods`, `sizes`): a KV layout calls `attention` once per sequence
        # (kv_torch), each with its own sizes and per-batch inputs, before any backward runs.
        ctx.graph = (out, lse.detach(), leaves, backend, options, dict(vars(backend)))
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        out, lse, leaves, backend, options, state = ctx.graph
        vars(backend).update(state)        # what a hand-written backward (`gradients`) reads: this call's
        grads = backend.gradients(out, lse, leaves, grad_out, options)
        if len(leaves) > len(grads):       # a hand-written (dQ, dK, dV): the sink logits' from the recorded graph
            grads = (*grads, *torch.autograd.grad(out, leaves[3:], grad_out, retain_graph=True))
        scale = backend.effective_scale(leaves[0].shape[-1], options["scale"])
        dsink = backend.corrupt_sink_grad(grads[3]) if len(grads) > 3 else None
        # no grads for backend, options
        return (*backend.corrupt_grads(*grads[:3], scale=scale), dsink, None, None)


def _tiles(x: torch.Tensor):
    """cols -> x[:, :, cols] for x (B, H, M, .), cut once into KEY_TILE pieces by `torch.split`: autograd then
    gathers every tile's gradient in one concatenation, where slicing per tile makes a zero (B, H, M, .) gradient
    for each tile (M^2 / KEY_TILE work: 9 s of the backward at M = 16,385, N = 16). A slice that is not a run
    of whole pieces (none of the twin's or mutants' tilings) is sliced directly."""
    pieces = x.split(KEY_TILE, dim=2)

    def tile(cols: slice) -> torch.Tensor:
        first, last = cols.start // KEY_TILE, -(-cols.stop // KEY_TILE)
        if cols.start % KEY_TILE or min(cols.stop, x.shape[2]) != min(last * KEY_TILE, x.shape[2]):
            return x[:, :, cols]
        return pieces[first] if last == first + 1 else torch.cat(pieces[first:last], dim=2)

    return tile


class BlockwiseTwin(TorchBackend):
    """twin: tiled online-softmax attention in PyTorch, correct; each mutant overrides one step."""

    name = "twin"
    # Half inputs computed in float32 and rounded once: every mutant inherits the claim and is held to it.
    # KV layouts read natively, one sequence at a time (`implementations/kv_torch.py`: its addressing steps,
    # `query_span`, `key_slots`, `append_at`, are the ones the layout mutants override).
    caps = Capabilities(grad=True, lse=True, precision=for_half(FLOAT32_INTERNAL), mods=SUPPORTED,
                        kv_layouts=("dense", "ragged", "paged"), kv_append=True, sink_grad=True)
    mods = TorchMods()      # the call's modifications, set by `attention` for the steps below
    num_splits: int | None = None      # split-KV chunks to force (1: never split); None: `split_count` decides

    # --- the steps a mutant may override -------------------------------------------------------------------------

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the kernel sees it: strides honoured."""
        return x

    def effective_scale(self, D: int, scale: float | None) -> float:
        return D ** -0.5 if scale is None else scale

    def kv_heads(self, H: int, Hkv: int, device) -> torch.Tensor:
        """(H,) index of the KV head each query head reads: groups of H // Hkv consecutive query heads share one."""
        return torch.arange(H, device=device) // (H // Hkv)

    def causal_keep(self, n: int, m: int, alignment: str, device) -> torch.Tensor:
        """Bool (N, M): query i sees key j iff j <= i (+ M - N for bottom_right)."""
        offset = 0 if alignment == "top_left" else m - n
        return torch.arange(m, device=device)[None, :] <= torch.arange(n, device=device)[:, None] + offset

    def key_tiles(self, M: int) -> list[slice]:
        """Key tiles covering 0..M, the last one partial when KEY_TILE does not divide M."""
        return [slice(j, min(j + KEY_TILE, M)) for j in range(0, M, KEY_TILE)]

    def scores(self, q, k_tile, bias_tile, scale, cols=None):
        """S_tile (B, H, N, T) = mods(scale q k^T) + bias; bias holds -inf where masked (window included)."""
        s = (q @ k_tile.transpose(-1, -2)) * scale
        if cols is not None:
            s = self.modify(s, cols)
        return s if bias_tile is None else s + bias_tile

    # --- modifications: each a step a mutant may override --------------------------------------------------------

    def modify(self, s, cols: slice):
        """The score modifications in the problem's order on scores s (B, H, N, T) of key columns `cols`."""
        n, m = self.sizes
        rows = torch.arange(n, device=s.device)
        for key in self.mods.order:
            if key == "softcap":
                s = self.softcap(s, self.mods.softcap)
            else:
                s = s + self.alibi_bias(self.mods.alibi.to(s.dtype), rows,
                                        torch.arange(cols.start, cols.stop, device=s.device), n, m)
        return s

    def softcap(self, s, cap: float):
        """cap tanh(s / cap) of the scaled scores."""
        return cap * torch.tanh(s / cap)

    def alibi_slopes(self, slopes):
        """Slopes (H,) or (B, H) as (B|1, H, 1, 1)."""
        per = slopes if slopes.ndim == 2 else slopes[None]
        return per[..., None, None]

    def alibi_bias(self, slopes, rows, cols, n: int, m: int):
        """-slope_h |i + M - N - j| (B|1, H, R, T)."""
        return -self.alibi_slopes(slopes) * (rows[:, None] + m - n - cols[None, :]).abs().to(slopes.dtype)

    def window_keep(self, n: int, m: int, window, device):
        """Bool (N, M): -right <= i + M - N - j <= left (-1: unbounded)."""
        left, right = window
        d = torch.arange(n, device=device)[:, None] + m - n - torch.arange(m, device=device)[None, :]
        keep = torch.ones(n, m, dtype=torch.bool, device=device)
        if left >= 0:
            keep &= d <= left
        if right >= 0:
            keep &= d >= -right
        return keep

    def document_keep(self, ids, n: int, m: int):
        """Bool (B, 1, N, M): key j is in the document of the query's key position i + M - N (clipped to 0)."""
        position = (torch.arange(n, device=ids.device) + m - n).clamp(0, m - 1)
        return (ids[:, position][:, :, None] == ids[:, None, :])[:, None]

    def prefix_keep(self, n: int, m: int, prefix: int, device):
        """Bool (N, M): key j is in the prefix (j < P) or at or before the query's key position i + M - N."""
        j = torch.arange(m, device=device)[None, :]
        return (j < prefix) | (j <= torch.arange(n, device=device)[:, None] + m - n)

    def sink_state(self, m, l):
        """(m, l) with the sink logits (H,) as one more term of each row's denominator: (sink, 1)."""
        sinks = self.mods.sinks.to(m.dtype)[None, :, None, None].expand_as(m)
        return sinks.clone(), torch.ones_like(l)

    def online_update(self, m, l, acc, s, v_tile):
        """One tile of the recurrence; m, l (B, H, N, 1), acc (B, H, N, Dv), s (B, H, N, T)."""
        # The max is a constant to autograd: O and lse do not depend on it, and a differentiated max would
        # disagree with the shifts earlier tiles already applied.
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True)).detach()
        shift = torch.where(m_new == NEG_INF, torch.zeros_like(m_new), m_new)   # -inf - -inf would be NaN
        alpha = torch.exp(m - shift)
        p = torch.exp(s - shift)
        return m_new, alpha * l + p.sum(dim=-1, keepdim=True), alpha * acc + p @ v_tile

    def finish(self, m, l, acc, scale):
        """(O (B, H, N, Dv), lse (B, H, N)); rows that saw no key give O = 0 and lse = -inf."""
        empty = l == 0                                   # saw no key; a NaN row is not empty and keeps its NaN
        l_safe = torch.where(empty, torch.ones_like(l), l)
        out = acc / l_safe
        lse = torch.where(empty, torch.full_like(l, NEG_INF), m + torch.log(l_safe))
        return out, lse.squeeze(-1)

    def tile_order(self, tiles: list[slice]) -> list[slice]:
        return tiles

    def round_output(self, out: torch.Tensor, io_dtype: torch.dtype) -> torch.Tensor:
        """The result in the input dtype: one rounding to nearest."""
        return out.to(io_dtype)

    def corrupt_grads(self, dq, dk, dv, *, scale):
        """What a hand-written backward would return; the twin's is exact."""
        return dq, dk, dv

    def gradients(self, out, lse, leaves, grad_out, options):
        """(dQ, dK, dV) in the input dtype: autograd through the recorded forward `out` (lse (B, H, N) unused; the sink logits' too
        where they are a leaf)."""
        return torch.autograd.grad(out, leaves, grad_out, retain_graph=True)

    def corrupt_sink_grad(self, dsink):
        """The sink logits' gradient (H,) a hand-written backward would return; the twin's is autograd's."""
        return dsink

    # --- the algorithm -------------------------------------------------------------------------------------------

    def bias(self, mask, causal, B, N, M, dtype, device):
        """Additive float bias broadcastable to (B, H, N, M) (0 / -inf for bool masks and causal), or None."""
        bias = None
        if mask is not None:
            bias = (mask.to(dtype) if mask.dtype != torch.bool
                    else torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, NEG_INF))
        if causal is not None:
            c = torch.zeros(N, M, dtype=dtype, device=device).masked_fill(~self.causal_keep(N, M, causal, device),
                                                                          NEG_INF)
            bias = c if bias is None else bias + c
        if self.mods.window is not None:
            w = torch.zeros(N, M, dtype=dtype, device=device).masked_fill(
                ~self.window_keep(N, M, self.mods.window, device), NEG_INF)
            bias = w if bias is None else bias + w
        if self.mods.document is not None:
            d = torch.zeros(B, 1, N, M, dtype=dtype, device=device).masked_fill(
                ~self.document_keep(self.mods.document, N, M), NEG_INF)
            bias = d if bias is None else bias + d
        if self.mods.prefix_lm is not None:
            p = torch.zeros(N, M, dtype=dtype, device=device).masked_fill(
                ~self.prefix_keep(N, M, self.mods.prefix_lm, device), NEG_INF)
            bias = p if bias is None else bias + p
        return bias

    def blockwise(self, q, k, v, *, mask, causal, scale):
        """(O, lse) in the input dtype for q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv)."""
        q, k, v = (self.read(x) for x in (q, k, v))
        io_dtype = q.dtype
        B, H, N, D = q.shape
        Hkv, M, Dv = k.shape[1], k.shape[2], v.shape[-1]
        acc_dtype = torch.float32 if io_dtype in (torch.float16, torch.bfloat16) else q.dtype
        heads = self.kv_heads(H, Hkv, q.device)
        # Cast before the head gather: autograd then sums a group's dK, dV in float32 and rounds once (gathering
        # first sums the group's half-precision gradients, more roundings than the twin's claim allows).
        q, k, v = q.to(acc_dtype), k.to(acc_dtype)[:, heads], v.to(acc_dtype)[:, heads]  # k, v: (B, H, M, .)
        scale = self.effective_scale(D, scale)
        self.sizes = (N, M)
        bias = self.bias(mask, causal, B, N, M, acc_dtype, q.device)
        m = torch.full((B, H, N, 1), NEG_INF, dtype=acc_dtype, device=q.device)
        l = torch.zeros_like(m)
        if self.mods.sinks is not None:
            m, l = self.sink_state(m, l)
        acc = torch.zeros(B, H, N, Dv, dtype=acc_dtype, device=q.device)
        splits = self.split_count(B, H, N, M, D)
        if splits > 1:
            out, lse = self.split_forward(q, k, v, bias, scale, splits)
            return self.round_output(out, io_dtype), lse
        k_tile, v_tile = _tiles(k), _tiles(v)
        for cols in self.tile_order(self.key_tiles(M)):
            s = self.scores(q, k_tile(cols), None if bias is None else bias[..., cols], scale,
                            cols if self.mods.order else None)
            m, l, acc = self.online_update(m, l, acc, s, v_tile(cols))
        out, lse = self.finish(m, l, acc, scale)
        return self.round_output(out, io_dtype), lse

    # --- split-KV (flash-decoding): chunks of keys, a partial (O_s, lse_s) each, one combine ----------------------

    def split_count(self, B: int, H: int, N: int, M: int, D: int) -> int:
        """`num_splits` if forced, else FlashAttention-2's `num_splits_heuristic` for an A100 (108 SMs, its argument
        2 x 108) with its blocks: B * H * ceil(N / 64) work items, ceil(M / split_block(D)) key blocks. A fixed
        machine, so the path the twin takes does not depend on the machine running the suite."""
        if self.num_splits is not None:
            return self.num_splits
        return num_splits_heuristic(B * H * -(-N // 64), TWIN_WORKERS, -(-M // self.split_block(D)))

    def split_block(self, D: int) -> int:
        """Keys per block when cutting chunks: FlashAttention-2's split-KV block_n (256 up to D 64, 128 up to 128,
        64 above), a multiple of KEY_TILE, so a chunk is whole tiles."""
        return 256 if D <= 64 else 128 if D <= 128 else 64

    def split_chunks(self, tiles: list[slice], M: int, D: int, splits: int) -> list[list[slice]]:
        """The key tiles grouped in chunks of ceil(blocks / splits) blocks (FlashAttention's n_blocks_per_split)."""
        block = self.split_block(D)
        per = -(-(-(-M // block)) // splits) * block
        return [[t for t in tiles if start <= t.start < start + per] for start in range(0, M, per)]

    def chunk_start(self, m, l):
        """(m, l) a chunk starts from: empty. The sink is no key of any chunk; it joins the combine once."""
        return m, l

    def sink_term(self, like):
        """The sink logits (H,) as a (B, H, N) term of the combine, or None."""
        return None if self.mods.sinks is None else self.mods.sinks.to(like.dtype)[None, :, None].expand_as(like)

    def combine(self, parts, sink):
        """(O, lse) from the chunks' [(O_s (B, H, N, Dv), lse_s (B, H, N))] and the sink term (B, H, N) or None:
        lse = log(sum_s exp(lse_s) + exp(sink)), O = sum_s exp(lse_s - lse) O_s. An empty chunk (lse_s = -inf)
        weighs 0; a row with every term -inf gives O = 0, lse = -inf."""
        lses = torch.stack([lse for _, lse in parts])                                   # (S, B, H, N)
        terms = lses if sink is None else torch.cat([lses, sink[None]])
        top = terms.amax(dim=0).detach()
        shift = torch.where(top == NEG_INF, torch.zeros_like(top), top)
        total = torch.exp(terms - shift).sum(dim=0)
        empty = total == 0
        safe = torch.where(empty, torch.ones_like(total), total)
        weights = torch.exp(lses - shift) / safe                                        # (S, B, H, N)
        out = sum(w[..., None] * o for w, (o, _) in zip(weights, parts))
        return out, torch.where(empty, torch.full_like(total, NEG_INF), shift + torch.log(safe))

    def split_forward(self, q, k, v, bias, scale, splits: int):
        """(O, lse) by split-KV: each chunk's tiles through the same recurrence from an empty state, then `combine`.
        q (B, H, N, D), k, v already per query head (B, H, M, .) in the work dtype."""
        B, H, N, D = q.shape
        M, Dv = k.shape[2], v.shape[-1]
        parts, k_tile, v_tile = [], _tiles(k), _tiles(v)
        for chunk in self.tile_order(self.split_chunks(self.key_tiles(M), M, D, splits)):
            m, l = self.chunk_start(torch.full((B, H, N, 1), NEG_INF, dtype=q.dtype, device=q.device),
                                    torch.zeros((B, H, N, 1), dtype=q.dtype, device=q.device))
            acc = torch.zeros(B, H, N, Dv, dtype=q.dtype, device=q.device)
            for cols in chunk:
                s = self.scores(q, k_tile(cols), None if bias is None else bias[..., cols], scale,
                                cols if self.mods.order else None)
                m, l, acc = self.online_update(m, l, acc, s, v_tile(cols))
            parts.append(self.finish(m, l, acc, scale))
        return self.combine(parts, self.sink_term(parts[0][1]))

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False, mods=TorchMods()):
        self.mods = mods
        options = dict(mask=mask, causal=causal, scale=scale)
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
            return _RecordedGrad.apply(q, k, v, mods.sinks, self, options)
        out, lse = self.blockwise(q, k, v, **options)
        return (out, lse) if return_lse else out


class FlashPrecisionTwin(BlockwiseTwin):
    """twin_flash: the twin rounding P to the input dtype before P V, as FlashAttention's tensor-core GEMM does;
    correct, and declared so (`attnbench.precision.FLASH`): a kernel the declared-precision rule must pass."""

    name = "twin_flash"
    caps = BlockwiseTwin.caps.replace(precision=for_half(FLASH))

    def blockwise(self, q, k, v, *, mask, causal, scale):
        self.io_dtype = q.dtype
        return super().blockwise(q, k, v, mask=mask, causal=causal, scale=scale)

    def online_update(self, m, l, acc, s, v_tile):
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True)).detach()
        shift = torch.where(m_new == NEG_INF, torch.zeros_like(m_new), m_new)
        alpha = torch.exp(m - shift)
        p = torch.exp(s - shift)                                  # in [0, 1]: rounded relative to the running max
        p_rounded = p.to(self.io_dtype).to(p.dtype)               # what the half-precision GEMM reads
        return m_new, alpha * l + p.sum(dim=-1, keepdim=True), alpha * acc + p_rounded @ v_tile


QUERY_TILE = 32         # Triton tutorial 06's backward: a key block's dK, dV sum query blocks of 32 (BLOCK_M1)


class TiledBackwardTwin(BlockwiseTwin):
    """twin_tiled_backward: the twin with FlashAttention 2's backward written out instead of autograd; correct.

    Not a suite twin (the suite runs the autograd twin): the base of the mutants whose bug is in a hand-written
    backward's accumulators, so each overrides one step below. From the forward's lse (float32) and the stored
    output O, per key tile (the forward's KEY_TILE keys; all queries at once, as the forward does):

        P = exp(S - lse)    dP = dO V^T    dS = P (dP - delta),  delta = rowsum(dO O)   (FlashAttention's preprocess)
        dQ  += scale dS K                      once per key tile      (`accumulate_dq`)
        dK   = scale sum over query tiles of dS_tile^T Q_tile, dV = sum of P_tile^T dO_tile   (`sum_query_tiles`)

    dS is taken through the score modifications by autograd on the tile's raw scores (softcap's 1 - tanh^2;
    ALiBi, windows, documents and causal are additive or masks). Everything in float32 for half inputs, a query
    head group's dK, dV summed in float32, each gradient rounded once to the input dtype.
    """

    name = "twin_tiled_backward"

    def delta(self, grad_out, out):
        """(B, H, N, 1) rowsum(dO O), from the output as stored (rounded to the input dtype), in float32."""
        return (grad_out * out.to(grad_out.dtype)).sum(dim=-1, keepdim=True)

    def accumulate_dq(self, dq, part):
        """dQ after one more key tile's share `part` (B, H, N, D)."""
        return dq + part

    def sum_query_tiles(self, parts):
        """dK or dV of one key tile from its per-query-tile shares (B, H, N / QUERY_TILE, T, .)."""
        return parts.sum(dim=2)

    def half_dtype(self, x):
        """The input dtype where it is a half type (what a mutant's accumulator is rounded to), else x's own."""
        return self.io_dtype if self.io_dtype in (torch.float16, torch.bfloat16) else x.dtype

    def gradients(self, out, lse, leaves, grad_out, options):
        q, k, v = (self.read(x) for x in leaves[:3])
        io_dtype = self.io_dtype = q.dtype
        acc_dtype = torch.float32 if io_dtype in (torch.float16, torch.bfloat16) else q.dtype
        B, H, N, D = q.shape
        Hkv, M, Dv = k.shape[1], k.shape[2], v.shape[-1]
        heads = self.kv_heads(H, Hkv, q.device)
        q, k, v = q.detach().to(acc_dtype), k.detach().to(acc_dtype)[:, heads], v.detach().to(acc_dtype)[:, heads]
        scale = self.effective_scale(D, options["scale"])
        bias = self.bias(options["mask"], options["causal"], B, N, M, acc_dtype, q.device)
        g = grad_out.to(acc_dtype)
        delta = self.delta(g, out.detach())
        shift = torch.where(lse == NEG_INF, torch.full_like(lse, float("inf")), lse).to(acc_dtype)[..., None]
        pad = -N % QUERY_TILE                                   # zero rows: the last query tile's missing rows

        def per_query_tile(x, y):                               # (B, H, N, T), (B, H, N, .) -> (B, H, N / 32, T, .)
            x, y = (torch.nn.functional.pad(a, (0, 0, 0, pad)) for a in (x, y))
            return torch.einsum("bhiqt,bhiqe->bhite", x.unflatten(2, (-1, QUERY_TILE)),
                                y.unflatten(2, (-1, QUERY_TILE)))

        dq = torch.zeros_like(q)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        for cols in self.key_tiles(M):
            with torch.enable_grad():
                raw = ((q @ k[:, :, cols].transpose(-1, -2)) * scale).requires_grad_()
                s = self.modify(raw, cols) if self.mods.order else raw
                s = s if bias is None else s + bias[..., cols]
            p = torch.exp(s.detach() - shift)
            ds = p * (g @ v[:, :, cols].transpose(-1, -2) - delta)
            ds = torch.autograd.grad(s, raw, ds)[0]                           # through the modifications
            dq = self.accumulate_dq(dq, scale * (ds @ k[:, :, cols]))
            dk[:, :, cols] = self.sum_query_tiles(scale * per_query_tile(ds, q))
            dv[:, :, cols] = self.sum_query_tiles(per_query_tile(p, g))

        def per_kv_head(x):                                     # (B, H, M, .) -> (B, Hkv, M, .), in float32
            return x.unflatten(1, (Hkv, H // Hkv)).sum(dim=2)

        return dq.to(io_dtype), per_kv_head(dk).to(io_dtype), per_kv_head(dv).to(io_dtype)
