"""One attention problem, shared by conformance and perf.

A `Problem` is a frozen description (shapes, dtype, causal alignment, mask kind,
input distribution, memory layout, seed); `make_inputs` turns it into float64
arrays whose values are exactly representable in the problem's dtype, so the
reference and the backend see the very same numbers and any disagreement is the
backend's arithmetic, not input rounding.

Shape letters: B batch, H query heads, Hkv key/value heads, N queries, M keys,
D query/key head dim, Dv value head dim.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from attnbench.reference import AttentionInputError, normalize_causal
from attnbench.reference import layouts as kv_layouts
from attnbench.reference import mods as modifications

DTYPES = ("float16", "bfloat16", "float32", "float64")
# Mask kinds and the form a backend must accept for each. The shapes cover every broadcast the API accepts:
#   bool, fully_masked, bias, bias_extreme   (B, 1, N, M)  one mask per batch, shared by the heads
#   per_head                                 (B, H, N, M)  a distinct mask per batch and head (GQA: per query head)
#   shared                                   (1, 1, N, M)  one mask for every batch and head
#   padding                                  (B, 1, 1, M)  per-batch key padding
#   head_bias                                (1, H, N, M)  a distinct bias per head, shared by the batch (ALiBi-like)
MASK_FORMS = {"bool": "bool", "padding": "bool", "fully_masked": "bool", "bias": "bias", "bias_extreme": "bias",
              "per_head": "bool", "shared": "bool", "head_bias": "bias"}
LAYOUTS = ("contiguous", "transposed", "strided")


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """float64 -> nearest values representable in `dtype` (round to nearest even), as float64."""
    if dtype == "float64":
        return np.asarray(x, dtype=np.float64)
    import torch  # numpy has no bfloat16; torch rounds every dtype we support the same way

    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(getattr(torch, dtype)).to(torch.float64).numpy()


# Past this many elements in one of q, k, v (2^31: 16 GiB a tensor in float64), `make_inputs` draws straight into
# the dtype's holder (HOLDER_DTYPES, `draw_in_dtype`): the same values in 2 bytes an element (float16) or 4
# (bfloat16, float32), so element offsets past 2^31 fit a machine's memory. Below it, inputs are float64 as ever.
DIRECT_ELEMENTS = 1 << 31
# Elements drawn (in float64) and rounded at a time by `draw_in_dtype`: 128 MiB of float64 scratch.
DRAW_CHUNK = 1 << 24
# The narrowest NumPy dtype that holds every value of a problem dtype exactly (NumPy has no bfloat16).
HOLDER_DTYPES = {"float16": np.float16, "bfloat16": np.float32, "float32": np.float32, "float64": np.float64}


def draw_in_dtype(rng: np.random.Generator, shape: tuple, dtype: str, *, chunk: int = DRAW_CHUNK) -> np.ndarray:
    """Standard normal values of `shape` rounded to `dtype`, held in HOLDER_DTYPES[dtype], drawn `chunk` at a time:
    equal to `round_to_dtype(rng.standard_normal(shape), dtype)` and leaving rng in the same state (a Generator's
    normal stream does not depend on how it is split), without the float64 array."""
    out = np.empty(shape, dtype=HOLDER_DTYPES[dtype])
    flat = out.reshape(-1)
    for start in range(0, flat.size, chunk):
        n = min(chunk, flat.size - start)
        flat[start:start + n] = round_to_dtype(rng.standard_normal(n), dtype)
    return out


# Input distributions: name -> f(rng, shape, role) with role in {"q", "k", "v"}.
# Standard normal, never uniform [0, 1): uniform positive inputs make every
# output row close to mean(V), which lets a kernel that ignores the scores pass.
INPUT_DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, tuple, str], np.ndarray]] = {
    "normal": lambda rng, shape, role: rng.standard_normal(shape),
}


def _large_logits(rng: np.random.Generator, shape: tuple, role: str) -> np.ndarray:
    """q, k ~ 64 N(0, 1): with D 128 many |q.k| exceed 65504 (float16 max) while q.k / sqrt(D) stays far below it.

    Catches kernels that form Q K^T in float16 and scale afterwards; v stays standard normal.
    """
    return rng.standard_normal(shape) * (64.0 if role in "qk" else 1.0)


def _near_ties(rng: np.random.Generator, shape: tuple, role: str) -> np.ndarray:
    """Every key is one shared vector plus a 2^-6 perturbation, so the scores of a row nearly tie."""
    x = rng.standard_normal(shape)
    if role == "k":
        x = x[..., :1, :] + 2.0**-6 * x
    return x


def _peaked(rng: np.random.Generator, shape: tuple, role: str) -> np.ndarray:
    """q, k ~ 4 N(0, 1): scores of spread ~16, so one key dominates each row (softmax close to one-hot)."""
    return rng.standard_normal(shape) * (4.0 if role in "qk" else 1.0)


def _tiny(rng: np.random.Generator, shape: tuple, role: str) -> np.ndarray:
    """Values ~ 2^-10 N(0, 1): q.k products (~2^-20) fall in float16's subnormal range (below 2^-14)."""
    return rng.standard_normal(shape) * 2.0**-10


def _nonfinite(rng: np.random.Generator, shape: tuple, role: str) -> np.ndarray:
    """Standard normal with one NaN in q and one +inf in v: the reference propagates both (see conformance)."""
    x = rng.standard_normal(shape)
    index = tuple(int(rng.integers(0, n)) for n in shape)
    if role == "q":
        x[index] = np.nan
    elif role == "v":
        x[index] = np.inf
    return x


def _one_binade_v(rng: np.random.Generator, shape: tuple, role: str) -> np.ndarray:
    """q, k standard normal; v positive in [1, 2): 1 + a per-column offset in [0, 1/8) + |N(0, 1)| / 16.

    Every output is then a weighted mean of same-sign values, so sum_m P |v| = |O| and a declared float32-internal
    bound shrinks to about u |O|: half an ulp of an O just above 1, plus a few percent. A kernel that rounds an
    intermediate of O's size to the half dtype before the final rounding (a split-KV partial) is a whole ulp off
    wherever the two roundings meet, in about one element in ten; with standard-normal V, sum P |v| is 20x |O| at
    M ~ 1,000 and the float32 terms of the bound hide that ulp (conformance/cases.py, DECODE). The column offsets
    spread the outputs over many ulps, so where O falls between two half-precision values varies by element.
    """
    if role in "qk":
        return rng.standard_normal(shape)
    offset = rng.uniform(0.0, 0.125, size=(*shape[:-2], 1, shape[-1]))
    return 1.0 + offset + np.abs(rng.standard_normal(shape)) / 16


def _one_binade_do(rng: np.random.Generator, shape: tuple, role: str) -> np.ndarray:
    """q, k, v standard normal, as `normal`; what differs is the upstream gradient: dO positive in one binade
    (`_one_binade_grad_out`), so every term of dV = P^T dO is positive and its sum of |terms| is |dV|."""
    return rng.standard_normal(shape)


INPUT_DISTRIBUTIONS.update(large_logits=_large_logits, near_ties=_near_ties, peaked=_peaked, tiny=_tiny,
                           nonfinite=_nonfinite, one_binade_v=_one_binade_v, one_binade_do=_one_binade_do)


def _one_binade_grad_out(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """dO (B, H, N, Dv) positive in [1, 2): 1 + a per-column offset in [0, 1/8) + |N(0, 1)| / 16, as
    `_one_binade_v` draws V. dV = P^T dO (summed over a KV group's query heads) is then a positive sum of positive
    terms, sum P^T |dO| = |dV|, and its row m is key m's attention mass (over the group's query rows) times a
    weighted mean of dO in [1, 1.4): within about one binade. A declared float32-internal bound on dV (`precision.backward_model_bound`), a
    float32 share times the largest sum of |terms| plus u max|dV|, then shrinks to about an ulp of dV's top
    binade, where with standard-normal dO the sums of |terms| were 3x max|dV| and hid a rounding in the half
    dtype (conformance/cases.py, GQA_GRAD_SUM). dQ, dK get no such help: dS = P (dP - delta) sums to 0 over
    each query row, so its terms have both signs whatever dO is. The column offsets spread dV over many ulps."""
    offset = rng.uniform(0.0, 0.125, size=(*shape[:-2], 1, shape[-1]))
    return 1.0 + offset + np.abs(rng.standard_normal(shape)) / 16


# Upstream gradient distributions, by the problem's input distribution (`Problem.inputs`): f(rng, shape) -> dO.
# Every other distribution draws dO standard normal (`make_grad_out`).
GRAD_OUT_DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, tuple], np.ndarray]] = {
    "one_binade_do": _one_binade_grad_out,
}


@dataclass(frozen=True)
class Problem:
    """Shapes and options of one attention call: q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv).

    Hkv, M and Dv default to H, N and D. `mask` is None or a key of MASK_FORMS (the kind; `make_inputs` draws
    its values into `Inputs.mask`, which the reference reads as `mods.InputMask`: `Inputs.reference_mods`);
    `causal` None, "top_left" or "bottom_right"; `scale` None means 1/sqrt(D).
    `mods`: an ordered tuple of modifications (`attnbench.reference.mods`: Window, Softcap, Alibi, Sinks),
    declared without their inputs; `make_inputs` binds them. In the spec each is one item: `window=256:0`.
    `kv`: the KV layout (`attnbench.reference.layouts`: "dense", "ragged", "paged:PAGE_SIZE"), `append`: new
    keys per sequence written into the cache before attending (0: none); N and M are then the longest lengths.
    """

    B: int = 1
    H: int = 2
    N: int = 64
    D: int = 64
    Hkv: int | None = None
    M: int | None = None
    Dv: int | None = None
    dtype: str = "float32"
    causal: str | None = None
    mask: str | None = None
    scale: float | None = None
    inputs: str = "normal"
    layout: str = "contiguous"
    seed: int = 0
    kv: str = "dense"
    append: int = 0
    mods: tuple = ()

    def __post_init__(self):
        for name, default in (("Hkv", self.H), ("M", self.N), ("Dv", self.D)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        object.__setattr__(self, "causal", normalize_causal(self.causal))
        object.__setattr__(self, "mods", modifications.check(self.mods))
        if any(isinstance(m, modifications.Causal) for m in self.mods):
            raise AttentionInputError("Problem: causal is a field of its own (causal=\"top_left\" or "
                                      "\"bottom_right\"), not one of mods")
        if any(isinstance(m, modifications.InputMask) for m in self.mods):
            raise AttentionInputError(f"Problem: the mask is a field of its own (mask= one of {tuple(MASK_FORMS)}; "
                                      "its values are drawn into Inputs.mask), not one of mods")
        sizes = {k: getattr(self, k) for k in ("B", "H", "Hkv", "N", "M", "D", "Dv")}
        bad = {k: v for k, v in sizes.items() if not isinstance(v, (int, np.integer)) or v < 1}
        if bad:
            raise AttentionInputError(f"Problem: sizes must be integers >= 1, got {bad}")
        if self.H % self.Hkv:
            raise AttentionInputError(f"Problem: H={self.H} must be a multiple of Hkv={self.Hkv}")
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and np.isfinite(self.scale)):
            raise AttentionInputError(f"Problem: scale must be a finite number or None, got {self.scale!r}")
        for name, value, allowed in (("dtype", self.dtype, DTYPES), ("mask", self.mask, (None, *MASK_FORMS)),
                                     ("inputs", self.inputs, tuple(INPUT_DISTRIBUTIONS)),
                                     ("layout", self.layout, LAYOUTS)):
            if value not in allowed:
                raise AttentionInputError(f"Problem: {name} must be one of {allowed}, got {value!r}")
        if not isinstance(self.append, (int, np.integer)) or isinstance(self.append, bool) or self.append < 0:
            raise AttentionInputError(f"Problem: append must be an integer >= 0, got {self.append!r}")
        object.__setattr__(self, "kv", kv_layouts.parse(self.kv).spec_value())
        reason = kv_layouts.check(self)
        if reason:
            raise AttentionInputError(f"Problem: {reason}")
        for mod in self.mods:
            reason = mod.check(self)
            if reason:
                raise AttentionInputError(f"Problem: {mod.label()}: {reason}")

    @property
    def reference_mods(self) -> tuple:
        """What the reference side computes: `Causal(self.causal)` first where causal is set, then `mods`
        (`mods.with_causal`). Backends keep reading `causal` (every backend API has it as a flag of its own); the
        reference, pair counts, tile skipping and row sampling read it only here, as one more modification."""
        return modifications.with_causal(self.causal, self.mods)

    def mod(self, key: str):
        """The modification named `key` ("window", ...) in this problem, or None."""
        return next((m for m in self.mods if m.key == key), None)

    @property
    def mask_form(self) -> str | None:
        """"bool" or "bias": the form of mask a backend must accept for this problem (None without a mask)."""
        return MASK_FORMS.get(self.mask)

    @property
    def id(self) -> str:
        """Readable test id, e.g. float16-B2-H4-Hkv2-N97-M113-D80-bottom_right."""
        parts = [self.dtype, f"B{self.B}", f"H{self.H}"]
        parts += [f"Hkv{self.Hkv}"] if self.Hkv != self.H else []
        parts += [f"N{self.N}"] + ([f"M{self.M}"] if self.M != self.N else [])
        parts += [f"D{self.D}"] + ([f"Dv{self.Dv}"] if self.Dv != self.D else [])
        parts += [p for p in (self.causal, self.mask) if p]
        parts += [f"scale{self.scale:g}"] if self.scale is not None else []
        parts += [p for p in (self.inputs, self.layout) if p not in ("normal", "contiguous")]
        parts += [f"{m.key}{m.spec_value()}" for m in self.mods]
        parts += [self.kv.replace(":", "")] if self.kv != "dense" else []
        parts += [f"append{self.append}"] if self.append else []
        return "-".join(parts + ([f"seed{self.seed}"] if self.seed else []))

    def spec(self) -> str:
        """`key=value,...`: sizes and dtype always, other fields where not default; `Problem.parse` reads it back."""
        always = ("B", "H", "Hkv", "N", "M", "D", "Dv", "dtype")
        fields = [f for f in dataclasses.fields(self) if f.name != "mods"]
        return ",".join([f"{f.name}={getattr(self, f.name)}" for f in fields
                         if f.name in always or getattr(self, f.name) != f.default] + [m.label() for m in self.mods])

    @classmethod
    def parse(cls, spec: str) -> "Problem":
        """Inverse of `spec`: "B=2,H=4,N=97,dtype=float16,causal=top_left,window=256:0" -> Problem.

        Modifications are items named by their key (`attnbench.reference.mods.MODS`), kept in their order."""
        kinds = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "mods"}
        values, mods = {}, []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, sep, raw = item.partition("=")
            if sep and key in modifications.MODS:
                mods.append(modifications.parse(key, raw))
                continue
            if not sep or key not in kinds:
                raise AttentionInputError(f"problem spec: expected key=value with key in "
                                          f"{sorted(kinds) + sorted(modifications.MODS)}, got {item!r}")
            values[key] = _parse_value(key, raw, kinds[key])
        return cls(**values, mods=tuple(mods))

    def replace(self, **changes) -> "Problem":
        return dataclasses.replace(self, **changes)


def _parse_value(key: str, raw: str, kind: str):
    if raw in ("None", ""):
        return None
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise AttentionInputError(f"problem spec: {key} expects a number, got {raw!r}") from None
    return raw


def apply_layout(x, layout: str, *, contiguous: Callable, zeros: Callable):
    """Same values as x (B, H, L, D) stored as `layout`, for NumPy arrays and torch tensors alike.

    contiguous: returns a C-contiguous copy; zeros(*shape): a zero array like x.
    "transposed": stored (B, L, H, D) and viewed back; "strided": every other element of a wider last dim.
    """
    if layout == "transposed":
        return contiguous(x.swapaxes(1, 2)).swapaxes(1, 2)
    if layout == "strided":
        wide = zeros(*x.shape[:-1], 2 * x.shape[-1])
        wide[..., ::2] = x
        return wide[..., ::2]
    return contiguous(x)


@dataclass(frozen=True)
class Inputs:
    """float64 arrays holding dtype-representable values: q (B, H, N, D), k (B, Hkv, M, D),
    v (B, Hkv, M, Dv), mask None, bool (True = attend) or a float bias, rank 4 and broadcastable to
    (B, H, N, M) (see MASK_FORMS for the shapes). A problem with a tensor past DIRECT_ELEMENTS holds q, k, v
    in HOLDER_DTYPES[dtype] instead (the same values; `make_inputs`): convert what you read, a block at a time."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None
    mods: tuple = ()           # the problem's modifications bound to their inputs (sink logits, ALiBi slopes)
    # A layout problem's physical storage (`attnbench.reference.layouts.Storage`: packed or paged K/V, offsets,
    # block table, appended keys), None for plain dense. q, k, v and mask are then its logical dense view (what
    # the reference reads: zeros and a mask outside each sequence); a backend that reads the layout reads `kv`.
    kv: object | None = None

    def reference_mods(self, problem: Problem) -> tuple:
        """The bound modifications the reference computes: the problem's causal first (`Problem.reference_mods`,
        bound), then the mask as `InputMask(self.mask)` last (`mods.with_mask`: a float bias adds after every score
        modification). Backends keep taking `mask` as an argument of their own."""
        return modifications.with_mask(modifications.with_causal(problem.causal, self.mods), self.mask)

    def reference_kwargs(self, problem: Problem) -> dict:
        """Keyword arguments for `attnbench.reference.sdpa` on these inputs (causal and the mask inside `mods`)."""
        return dict(scale=problem.scale, mods=self.reference_mods(problem))


def _make_mask(p: Problem, rng: np.random.Generator) -> np.ndarray | None:
    if p.mask is None:
        return None
    if p.mask == "padding":                                                  # per-batch valid key length
        lengths = rng.integers(1, p.M + 1, size=p.B)
        return (np.arange(p.M)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, M)
    if p.mask == "bias":
        return round_to_dtype(rng.standard_normal((p.B, 1, p.N, p.M)), p.dtype)
    if p.mask == "head_bias":
        return round_to_dtype(rng.standard_normal((1, p.H, p.N, p.M)), p.dtype)
    if p.mask == "bias_extreme":                                            # -1e4 and -inf entries, no empty row
        u = rng.random((p.B, 1, p.N, p.M))
        bias = np.where(u < 0.3, -1e4, np.where(u < 0.5, -np.inf, rng.standard_normal(u.shape)))
        bias[..., np.arange(p.N), np.arange(p.N) % p.M] = 0.0
        return round_to_dtype(bias, p.dtype)
    shape = {"per_head": (p.B, p.H, p.N, p.M), "shared": (1, 1, p.N, p.M)}.get(p.mask, (p.B, 1, p.N, p.M))
    keep = rng.random(shape) < 0.7
    keep[..., np.arange(p.N), np.arange(p.N) % p.M] = True                     # every row keeps a key ...
    if p.mask == "fully_masked":
        keep[..., sorted({0, p.N // 2}), :] = False                           # ... except these rows
    return keep


def largest_tensor(problem: Problem) -> int:
    """Elements of the largest of q (B, H, N, D), k (B, Hkv, M, D), v (B, Hkv, M, Dv)."""
    p = problem
    return max(p.B * p.H * p.N * p.D, p.B * p.Hkv * p.M * p.D, p.B * p.Hkv * p.M * p.Dv)


def drawn_in_dtype(problem: Problem) -> bool:
    """Whether `make_inputs` holds this problem's q, k, v in its dtype (a tensor past DIRECT_ELEMENTS)."""
    return largest_tensor(problem) > DIRECT_ELEMENTS


def make_inputs(problem: Problem) -> Inputs:
    """Deterministic inputs for `problem` (same seed, same arrays), rounded to its dtype; past DIRECT_ELEMENTS
    in one tensor, the same values held in the dtype (`_make_direct_inputs`)."""
    if drawn_in_dtype(problem):
        return _make_direct_inputs(problem)
    rng = np.random.default_rng(problem.seed)
    draw = INPUT_DISTRIBUTIONS[problem.inputs]
    p = problem
    q = draw(rng, (p.B, p.H, p.N, p.D), "q")
    k = draw(rng, (p.B, p.Hkv, p.M, p.D), "k")
    v = draw(rng, (p.B, p.Hkv, p.M, p.Dv), "v")
    mask = _make_mask(p, rng)
    # The modifications draw from their own generator: adding one leaves q, k, v and the mask unchanged.
    mods = modifications.bind(p.mods, p, np.random.default_rng([p.seed, 4099]))
    q, k, v = (round_to_dtype(x, p.dtype) for x in (q, k, v))
    if not kv_layouts.needs_storage(p):
        return Inputs(q, k, v, mask, mods)
    # The storage's garbage (cache slots no sequence holds) from a generator of its own, rounded like the rest.
    storage, (q, k, v, mask) = kv_layouts.make_storage(p, q, k, v, np.random.default_rng([p.seed, 6007]))
    storage.k, storage.v = round_to_dtype(storage.k, p.dtype), round_to_dtype(storage.v, p.dtype)
    return Inputs(q, k, v, mask, mods, storage)


def _make_direct_inputs(p: Problem) -> Inputs:
    """`make_inputs` past DIRECT_ELEMENTS: q, k, v drawn chunk by chunk into HOLDER_DTYPES[dtype], in the order
    and from the generator the float64 path uses, so the values are the ones it would give. Standard normal
    inputs, no mask, dense KV only (the others form float64 tensors or (N, M) masks)."""
    if p.inputs != "normal" or p.mask is not None or kv_layouts.needs_storage(p):
        raise AttentionInputError(f"Problem: a tensor of {largest_tensor(p)} elements (past {DIRECT_ELEMENTS}) is "
                                  f"drawn in its dtype: inputs=normal, no mask, dense KV only; got inputs="
                                  f"{p.inputs}, mask={p.mask}, kv={p.kv}")
    rng = np.random.default_rng(p.seed)
    q = draw_in_dtype(rng, (p.B, p.H, p.N, p.D), p.dtype)
    k = draw_in_dtype(rng, (p.B, p.Hkv, p.M, p.D), p.dtype)
    v = draw_in_dtype(rng, (p.B, p.Hkv, p.M, p.Dv), p.dtype)
    return Inputs(q, k, v, None, modifications.bind(p.mods, p, np.random.default_rng([p.seed, 4099])))


def make_grad_out(problem: Problem) -> np.ndarray:
    """The upstream gradient dO (B, H, N, Dv), rounded to the problem's dtype: standard normal, or what
    GRAD_OUT_DISTRIBUTIONS gives for the problem's input distribution."""
    rng = np.random.default_rng(problem.seed + 7919)
    shape = (problem.B, problem.H, problem.N, problem.Dv)
    draw = GRAD_OUT_DISTRIBUTIONS.get(problem.inputs)
    return round_to_dtype(rng.standard_normal(shape) if draw is None else draw(rng, shape), problem.dtype)
