"""The bound on exact shortcuts, counted by hand for a 2-token, 2-layer model."""

from __future__ import annotations

import pytest

from rome_lib.bench import exact_skip_bound


def test_bound_counts_only_the_blocks_and_tokens_a_restored_cell_can_change():
    # Reference: 3 kinds x 4 cells x (1 noisy + 1 clean row) x 2 tokens x 2 layers = 96 steps.
    # Needed (window 2 restores layers 0-1 for both cells' MLP/attention, so they rerun 2 blocks):
    #   token 0: layer 0: state 2x1 + mlp 2x2 + attn 2x2 = 10; layer 1: 0 + 4 + 4 = 8
    #   token 1: layer 0: state 1x1 + mlp 1x2 + attn 1x2 = 5;  layer 1: 0 + 2 + 2 = 4
    assert exact_skip_bound(2, 2, subject_start=0, samples=1, window=2) == pytest.approx(96 / 27)
    # A subject starting at token 1 leaves only token 1's cells to compute.
    assert exact_skip_bound(2, 2, subject_start=1, samples=1, window=2) == pytest.approx(96 / 9)
    # The state heatmap alone: 32 reference steps, 2 + 1 needed.
    assert exact_skip_bound(2, 2, 0, samples=1, window=2, kinds=["state"]) == pytest.approx(32 / 3)


def test_more_noise_draws_approach_the_clean_row_free_limit():
    assert exact_skip_bound(6, 8, 0, samples=10) == pytest.approx(3.176, abs=1e-3)
    assert exact_skip_bound(6, 8, 0, samples=1000) < exact_skip_bound(6, 8, 0, samples=1)
