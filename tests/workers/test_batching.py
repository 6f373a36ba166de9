from itertools import pairwise

import numpy as np
import pytest

from workers.batching import (
    ATTENTION_WIDTH,
    BATCH_OVERHEAD_TOKENS,
    MIN_LENGTH_SHARE,
    MIN_ROWS,
    pad_batch,
    padded_width,
    plan_batches,
    plan_least_cost,
)

LENGTHS = np.array([5, 300, 17, 17, 2, 128, 64, 9, 256, 33, 1, 77])


@pytest.mark.parametrize("budget", [1, 256, 300, 1000, 10**7])
def test_every_row_lands_in_exactly_one_batch(budget):
    batches = plan_batches(LENGTHS, budget)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(LENGTHS)))


@pytest.mark.parametrize("budget", [256, 300, 1000])
def test_padded_cost_stays_under_the_budget(budget):
    for batch in plan_batches(LENGTHS, budget):
        if len(batch) > 1:
            assert LENGTHS[batch].max() * len(batch) <= budget


def test_a_text_longer_than_the_budget_gets_a_batch_of_its_own():
    batches = plan_batches(LENGTHS, 200)
    assert [b.tolist() for b in batches if LENGTHS[b].max() > 200] == [[1], [8]]


def test_longest_first_and_sorted_within_batches():
    flat = np.concatenate(plan_batches(LENGTHS, 300))
    assert np.all(np.diff(LENGTHS[flat]) <= 0)


def test_extreme_budgets():
    assert all(len(b) == 1 for b in plan_batches(LENGTHS, 1))
    assert len(plan_batches(np.full(500, 17), 10**7)) == 1  # equal lengths: one batch
    with pytest.raises(ValueError, match="max_batch_tokens"):
        plan_batches(LENGTHS, 0)


def test_pad_batch_right_pads_to_a_multiple_of_four_and_masks():
    ids, mask = pad_batch([np.array([101, 7, 102]), np.array([101, 102])], pad_id=0)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.tolist() == [[101, 7, 102, 0], [101, 102, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]


def test_a_lone_row_is_run_beside_a_copy_of_itself():
    ids, mask = pad_batch([np.array([101, 7, 8, 9, 102])], pad_id=0)
    assert ids.tolist() == [[101, 7, 8, 9, 102, 0, 0, 0]] * 2
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]] * 2
    alone, _ = pad_batch([np.array([101, 102])], pad_id=0, multiple=1, min_rows=1)
    assert alone.tolist() == [[101, 102]]


def test_the_budget_counts_the_padded_width():
    # 5 tokens pad to 8: a budget of 16 holds two such rows, not three
    assert [len(b) for b in plan_batches(np.array([5, 5, 5]), 16)] == [2, 1]


def test_a_batch_holds_no_text_much_shorter_than_its_width():
    lengths = np.array([100, 95, 71, 69, 40, 30, 29, 3])
    batches = [lengths[b].tolist() for b in plan_batches(lengths, 10**6)]
    assert batches == [[100, 95], [71, 69], [40], [30, 29], [3]]
    for batch in batches:
        assert min(batch) >= MIN_LENGTH_SHARE * max(batch)


# --- plan_least_cost, the CPU's planner


def model_cost(lengths, batches, min_rows=MIN_ROWS):
    """The padded compute of batches under batching.py's CPU cost model."""
    total = 0.0
    for batch in batches:
        width = padded_width(lengths[batch].max())
        rows = max(len(batch), min_rows)
        total += rows * width * (1 + width / ATTENTION_WIDTH) + BATCH_OVERHEAD_TOKENS
    return total


@pytest.mark.parametrize("budget", [1, 200, 256, 300, 1000, 10**7])
def test_least_cost_keeps_every_rule_of_the_greedy_planner(budget):
    batches = plan_least_cost(LENGTHS, budget)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(LENGTHS)))
    flat = np.concatenate(batches)
    assert np.all(np.diff(LENGTHS[flat]) <= 0)  # longest first, sorted within batches
    for batch in batches:
        if len(batch) > 1:
            assert padded_width(LENGTHS[batch].max()) * len(batch) <= budget


def test_least_cost_is_the_least_over_every_way_to_cut_the_sorted_texts():
    rng = np.random.default_rng(0)
    for _ in range(30):
        lengths = rng.integers(1, 300, size=int(rng.integers(1, 9)))
        budget, min_rows = int(rng.choice([64, 512, 4096])), int(rng.choice([1, 2]))
        order = np.argsort(-lengths, kind="stable")
        fits = [
            cut
            for cut in every_cut(order)
            if all(len(b) == 1 or padded_width(lengths[b].max()) * len(b) <= budget for b in cut)
        ]
        least = min(model_cost(lengths, cut, min_rows) for cut in fits)
        found = plan_least_cost(lengths, budget, min_rows)
        assert model_cost(lengths, found, min_rows) == pytest.approx(least)


def every_cut(order):
    """Every split of order into consecutive runs."""
    for mask in range(2 ** max(0, len(order) - 1)):
        cuts = [0, *[i + 1 for i in range(len(order) - 1) if mask >> i & 1], len(order)]
        yield [order[a:b] for a, b in pairwise(cuts)]


def test_least_cost_pads_a_real_length_mix_less_than_the_greedy_planner():
    # token counts shaped like the stdlib corpus's: most texts short, a long tail cut at 256
    lengths = np.minimum(np.random.default_rng(1).lognormal(3.4, 0.9, 900).astype(int) + 2, 256)
    greedy, least = plan_batches(lengths, 2048), plan_least_cost(lengths, 2048)
    assert model_cost(lengths, least) < 0.97 * model_cost(lengths, greedy)


def test_least_cost_takes_the_same_budget_errors():
    with pytest.raises(ValueError, match="max_batch_tokens"):
        plan_least_cost(LENGTHS, 0)
    assert len(plan_least_cost(np.full(500, 17), 10**7)) == 1  # equal lengths: one batch
