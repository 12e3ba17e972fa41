"""Two narrow backends for tests/test_constraints.py: float16 only, N and M multiples of 128, D in {64, 128}.

narrow_sdpa is correct inside those constraints (torch SDPA); narrow_sdpa_no_scale forgets 1/sqrt(D) there.
Loaded as a user would: `pytest conformance --plugin tests/plugins/narrow_plugin.py --backend narrow_sdpa`.
"""
import torch

from attnbench.implementations import Capabilities, TorchBackend, register

NARROW = Capabilities(dtypes=("float16",), seq_multiple=128, head_dim_choices=(64, 128), causal=("top_left",),
                      masks=(), dv_differs=False, grad=True)


@register
class NarrowSdpa(TorchBackend):
    """narrow_sdpa: torch SDPA declared for float16, N and M multiples of 128, D in {64, 128} only."""

    name = "narrow_sdpa"
    caps = NARROW

    def scale(self, q, scale):
        return scale

    def attention(self, q, k, v, *, mask, causal, scale, return_lse=False):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal == "top_left", scale=self.scale(q, scale), enable_gqa=k.shape[1] != q.shape[1])


@register
class NarrowSdpaNoScale(NarrowSdpa):
    """narrow_sdpa_no_scale: narrow_sdpa with the softmax scale forgotten (a bug inside the constraints)."""

    name = "narrow_sdpa_no_scale"

    def scale(self, q, scale):
        return 1.0
