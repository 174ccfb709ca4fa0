"""The SemEval-2025 Task 4 scorer's item metrics.

Regurgitation (sentence completion): ROUGE-L recall of the generation against the gold output,
rouge-score with the Porter stemmer. Knowledge (QA): exact match of the stripped, lower-cased
generation and answer.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generation: str, gold: str) -> float:
    return float(_scorer().score(gold, generation)["rougeL"].recall)


def exact_match(generation: str, gold: str) -> float:
    return float(generation.strip().lower() == gold.strip().lower())


def item_score(kind: str, generation: str, gold: str) -> float:
    """The registered metric for an item kind (amnesia.measures: 'sc' -> ROUGE-L recall, 'qa' -> exact match)."""
    from amnesia.measures import item_score as registered

    return registered(kind, generation, gold)
