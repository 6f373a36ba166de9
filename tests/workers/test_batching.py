import numpy as np
import pytest

from workers.batching import MIN_LENGTH_SHARE, pad_batch, plan_batches

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
