"""attnbench-peers: adapters that put three attention libraries we did not write under attnbench's suites.

    hf_sdpa            transformers' sdpa_attention_forward (transformers.integrations.sdpa_attention)
    hf_eager           transformers' Llama eager_attention_forward (transformers.models.llama.modeling_llama)
    keras_numpy        Keras 3's keras.ops.dot_product_attention on the NumPy backend
    triton_tutorial06  Triton's tutorial 06 fused attention, from a copy of the tutorial file you point at

Each module registers its backends when imported (the entry points in pyproject.toml import them at
discovery). A library that is missing makes its backend unavailable with the reason; nothing here imports
transformers, keras or the tutorial before a backend is asked whether it can run. What each library gets
wrong is declared on its backend: a `known_deviations` entry (witness and evidence, checked by
conformance/test_known_deviations.py) or a narrower capability whose skip reason says why.
"""
