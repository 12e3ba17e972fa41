"""Golden figures from the notes, typed in literally (not recomputed by the code under test)."""
import numpy as np
import pytest

from attnbench import reference

# "Your journey starts with one step", 3-d embeddings from the notes.
JOURNEY = np.array([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                    [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])


def test_journey_attention_weights_match_the_notes():
    weights, _ = reference.simple_self_attention(JOURNEY)
    np.testing.assert_allclose(weights[1], [0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581], atol=5e-5)


def test_journey_context_vector_matches_the_notes():
    _, context = reference.simple_self_attention(JOURNEY)
    np.testing.assert_allclose(context[1], [0.4419, 0.6515, 0.5683], atol=5e-5)


def test_fluffy_blue_creature_pattern_has_64_entries():
    sentence = "a fluffy blue creature roamed the verdant forest".split()
    assert reference.attention_pattern_size(len(sentence)) == 64


def test_gpt3_parameter_counts_match_the_notes():
    per_matrix = reference.attention_param_count(12_288, 128, 1, 1) // 4
    assert per_matrix == 1_572_864
    per_head = reference.attention_param_count(12_288, 128, 1, 1)
    assert per_head == 6_291_456 and round(per_head / 1e6, 1) == 6.3
    total = reference.attention_param_count(12_288, 128, 96, 96)
    assert total == 57_982_058_496 and round(total / 1e9) == 58


def test_value_params_equal_query_plus_key_params():
    """The notes: low-rank value down/up keep value params = query params + key params."""
    qk = 2 * 12_288 * 128
    assert reference.attention_param_count(12_288, 128, 1) - qk == qk


@pytest.mark.parametrize("causal, n, m, pairs", [(None, 4, 6, 24), ("top_left", 4, 4, 10), ("top_left", 4, 6, 10),
                                                 ("bottom_right", 4, 6, 18), ("bottom_right", 6, 4, 10)])
def test_attended_pairs_count_the_causal_triangle(causal, n, m, pairs):
    assert reference.attended_pairs(n, m, causal) == pairs


def test_attention_flops_count_two_per_multiply_add():
    assert reference.attention_flops(1, 1, 4, 6, 8) == 2 * 24 * (8 + 8)
    assert reference.attention_flops(1, 1, 4, 4, 8, causal="top_left", pass_="fwd+bwd") == 3 * 2 * 10 * 16
