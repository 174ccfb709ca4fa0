"""The scorer's metrics pinned on examples computed by hand."""

import pytest

from amnesia.science.metrics.aggregate import (
    aggregate_values,
    final_score,
    harmonic_mean,
    mia_auc,
    mia_score,
    per_task,
    task_aggregate,
)
from amnesia.science.metrics.items import exact_match, item_score, rouge_l_recall


def test_item_metrics() -> None:
    # Gold "the cat sat on the mat" (6 tokens); generation shares the subsequence "the cat on the mat" (5).
    assert rouge_l_recall("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_l_recall("Cats running", "cat runs") == 1.0  # the Porter stemmer is on
    assert exact_match("  Porto \n", "porto") == 1.0 and exact_match("Porto.", "Porto") == 0.0
    assert item_score("qa", " Lima", "lima") == 1.0 and item_score("sc", "x y", "x y z w") == 0.5


def test_per_task_means_by_kind() -> None:
    got = per_task([("T1", "sc", 0.5), ("T1", "sc", 1.0), ("T1", "qa", 0.0), ("T2", "qa", 1.0)])
    assert got == {"T1": {"knowledge": 0.0, "regurgitation": 0.75}, "T2": {"knowledge": 1.0}}


def test_harmonic_mean_and_its_zero_case() -> None:
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / (2 + 1))
    assert harmonic_mean([0.2, 0.4, 0.8]) == pytest.approx(3 / (5 + 2.5 + 1.25))
    assert harmonic_mean([0.9, 0.0, 1.0]) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean([])


def test_task_aggregate_flips_the_forget_values() -> None:
    forget = {"T2": {"knowledge": 0.25, "regurgitation": 0.5}}
    retain = {"T2": {"knowledge": 1.0, "regurgitation": 0.8}}
    assert aggregate_values(forget, retain) == [0.75, 0.5, 1.0, 0.8]
    assert task_aggregate(forget, retain) == pytest.approx(4 / (1 / 0.75 + 2 + 1 + 1.25))
    # A forget set still fully reproduced (value 1 -> 1 - 1 = 0) zeroes the aggregate.
    assert task_aggregate({"T2": {"knowledge": 1.0}}, retain) == 0.0


def test_mia_auc_direction_and_score() -> None:
    # Members with the lower loss are what a memorising model shows: the attack wins, AUC 1, score 0.
    assert mia_auc([0.1, 0.2], [1.0, 2.0]) == 1.0 and mia_score(1.0) == 0.0
    # Over-unlearned: members now have the higher loss; AUC 0 is just as telling, score 0 too.
    assert mia_auc([3.0, 4.0], [1.0, 2.0]) == 0.0 and mia_score(0.0) == 0.0
    # Indistinguishable: chance, score 1. One of four pairs ordered: AUC 0.25 -> score 0.5.
    assert mia_auc([1.0, 2.0], [1.0, 2.0]) == 0.5 and mia_score(0.5) == 1.0
    assert mia_auc([1.5, 3.0], [1.0, 2.0]) == 0.25 and mia_score(0.25) == 0.5


def test_final_is_the_mean_of_the_three() -> None:
    assert final_score(0.9, 0.6, 0.3) == pytest.approx(0.6)
