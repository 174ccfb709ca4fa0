"""The SemEval-2025 Task 4 scorer's item metrics.

Regurgitation (sentence completion): ROUGE-L recall of the generation against the gold output,
rouge-score with the Porter stemmer. Knowledge (QA): exact match of the stripped, lower-cased
generation and answer.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar


@cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generation: str, gold: str) -> float:
    return float(_scorer().score(gold, generation)["rougeL"].recall)


def exact_match(generation: str, gold: str) -> float:
    return float(generation.strip().lower() == gold.strip().lower())


class ItemMetric:
    kind: ClassVar[str]  # the record kind it scores (sc, qa)
    figure: ClassVar[str]  # the name of its per-task mean
    name: ClassVar[str]

    def score(self, generation: str, gold: str) -> float:
        raise NotImplementedError


ITEM_METRICS: dict[str, ItemMetric] = {}  # record kind -> its metric


def register_item(cls: type[ItemMetric]) -> type[ItemMetric]:
    if cls.kind in ITEM_METRICS:
        raise ValueError(f"record kind {cls.kind!r} already has an item metric")
    ITEM_METRICS[cls.kind] = cls()
    return cls


@register_item
class RougeLRecall(ItemMetric):
    kind, figure, name = "sc", "regurgitation", "rouge_l_recall"

    def score(self, generation: str, gold: str) -> float:
        return rouge_l_recall(generation, gold)


@register_item
class ExactMatch(ItemMetric):
    kind, figure, name = "qa", "knowledge", "exact_match"

    def score(self, generation: str, gold: str) -> float:
        return exact_match(generation, gold)


def item_score(kind: str, generation: str, gold: str) -> float:
    return ITEM_METRICS[kind].score(generation, gold)
