"""triton_blockwise on CPU: available only under the interpreter, and bfloat16 refused there for a reason that holds.

Each check runs in a fresh interpreter, because whether triton.jit builds
interpreted kernels is fixed by TRITON_INTERPRET when the kernels are decorated.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

# A bf16 tl.dot next to the same dot on float32-upcast values, under the interpreter: the interpreter keeps
# bf16 as uint16 bit patterns (triton/runtime/interpreter.py) and its create_dot multiplies those integers.
BF16_DOT_PROBE = """
import torch, triton, triton.language as tl

@triton.jit
def dot(A, B, C, UPCAST: tl.constexpr):
    r = tl.arange(0, 16)
    a = tl.load(A + r[:, None] * 16 + r[None, :])
    b = tl.load(B + r[:, None] * 16 + r[None, :])
    if UPCAST:
        a, b = a.to(tl.float32), b.to(tl.float32)
    tl.store(C + r[:, None] * 16 + r[None, :], tl.dot(a, b))

torch.manual_seed(0)
a, b = torch.randn(16, 16, dtype=torch.bfloat16), torch.randn(16, 16, dtype=torch.bfloat16)
want = a.double() @ b.double()
for upcast in (False, True):
    c = torch.empty(16, 16)
    dot[(1,)](a, b, c, UPCAST=upcast)
    print((c.double() - want).abs().max().item())
"""


def run_python(code: str, *, interpret: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_cpu_needs_the_interpreter():
    code = ("from attnbench.implementations import get_backend; from attnbench.problem import Problem; "
            "print(get_backend('triton_blockwise').why_not(Problem(), 'cpu'))")
    assert run_python(code, interpret=False).strip() == "CPU runs need TRITON_INTERPRET=1 (the Triton interpreter)"
    assert run_python(code, interpret=True).strip() == "None"


def test_interpreter_bf16_dot_is_still_wrong():
    """If this fails, the interpreter computes bf16 correctly now: declare bfloat16 on CPU in triton_blockwise."""
    raw, upcast = map(float, run_python(BF16_DOT_PROBE, interpret=True).split())
    assert upcast < 1e-4 and raw > 1.0
