"""The metric registry: it reproduces the scorer's figures exactly, reads evidence stored before it, and a
newly registered metric reaches the evaluation, MLflow's flat view, the gate's floors and the report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amnesia.results.evaluation import Evaluation
from amnesia.science.metrics import registry as measures
from amnesia.science.metrics.aggregate import final_score, mia_auc, mia_score, per_task, task_aggregate
from amnesia.science.metrics.items import ITEM_METRICS, exact_match, item_score, rouge_l_recall
from amnesia.science.metrics.registry import METRICS, Figure, Measured, Metric, compute, direction, register
from amnesia.science.records import UnlearningRecord
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.gate.report import rows
from amnesia.stages.gate.stage import decide

FORGET = [("f1qa0", "qa", "Porto", "porto"), ("f1sc0", "sc", "was born in Porto in 1990", "born in Lima in 1990")]
RETAIN = [("r1qa0", "qa", "Lima", "Lima"), ("r1sc0", "sc", "lives in Oslo", "lives in Oslo now")]


def _measured(cfg: EvaluateConfig) -> Measured:
    scored = {}
    for group, rows_ in (("forget", FORGET), ("retain", RETAIN), ("retain_held_out", RETAIN)):
        scored[group] = [
            (UnlearningRecord(id=i, input="q", output=gold, task="Task2"), gen, item_score(kind, gen, gold))
            for i, kind, gold, gen in rows_
        ]
    scores = {g: per_task((r.task, r.kind, s) for r, _g, s in items) for g, items in scored.items()}
    return Measured(cfg, "candidate", scores, scored, ([0.5, 0.7, 0.9], [0.6, 1.2, 1.4]))


def _evaluation(figures: dict[str, float | None], m: Measured, attacks: dict | None = None) -> Evaluation:
    return Evaluation(
        role=m.role, model_uri="/m", model_digest=None, uri="/e", digest="", key=None, cached=False,
        forget=m.scores["forget"], retain=m.scores["retain"], retain_held_out=m.scores["retain_held_out"],
        metrics=figures, mmlu_subjects={}, mmlu_questions=0, mmlu_sampling="none", counts={}, seconds=0.0,
        attacks=attacks or {},
    )  # fmt: skip


def test_item_metrics_are_the_scorers() -> None:
    assert ITEM_METRICS["qa"].figure == "knowledge" and ITEM_METRICS["sc"].figure == "regurgitation"
    for _id, kind, gold, gen in FORGET + RETAIN:
        want = exact_match(gen, gold) if kind == "qa" else rouge_l_recall(gen, gold)
        assert item_score(kind, gen, gold) == want


def test_the_registry_reproduces_every_figure_exactly() -> None:
    m = _measured(EvaluateConfig(mmlu=None))
    got = compute(m)
    agg = task_aggregate(m.scores["forget"], m.scores["retain"])
    auc = mia_auc([0.5, 0.7, 0.9], [0.6, 1.2, 1.4])
    assert got == {"task_aggregate": agg, "mia_auc": auc, "mia_score": mia_score(auc), "mmlu": None,
                   "mmlu_macro": None, "final": None}  # fmt: skip
    assert auc == pytest.approx(7 / 9)  # 7 of the 9 member/non-member pairs ordered right
    # final is the official mean of the three, once all three are measured
    m2 = _measured(EvaluateConfig(mmlu=None))
    m2.figures["mmlu"] = 0.5
    assert measures.Final().compute(m2) == {"final": None}  # task aggregate and MIA not yet computed
    m2.figures |= {"task_aggregate": agg, "mia_score": mia_score(auc)}
    assert measures.Final().compute(m2) == {"final": final_score(agg, mia_score(auc), 0.5)}


def test_evidence_stored_before_the_registry_still_loads() -> None:
    m = _measured(EvaluateConfig(mmlu=None))
    ev = _evaluation(compute(m), m)
    old = ev.model_dump()
    old |= old.pop("metrics")  # the old layout: the built-in figures at the top level
    back = Evaluation.model_validate(old)
    assert back.metrics == ev.metrics and back.task_aggregate == ev.task_aggregate and back.mia_auc == ev.mia_auc
    assert Evaluation.model_validate_json(ev.model_dump_json()) == ev


class EmptyAnswers(Metric):
    """A metric a user might add: the share of forget prompts answered with nothing at all."""

    figures = (Figure("forget_empty_answers", "lower", "share of forget prompts answered with nothing", True),)

    def compute(self, m: Measured) -> dict[str, float | None]:
        gens = [g for _r, g, _s in m.items["forget"]]
        return {"forget_empty_answers": sum(not g.strip() for g in gens) / len(gens)}


@pytest.fixture
def empty_answers() -> Iterator[None]:
    register("empty_answers")(EmptyAnswers)
    try:
        yield
    finally:
        del METRICS["empty_answers"]


def test_a_new_metric_reaches_the_evaluation_the_gate_and_the_report(empty_answers: None) -> None:
    m = _measured(EvaluateConfig(mmlu=None))
    m.items["forget"][0] = (m.items["forget"][0][0], "  ", 0.0)  # one of the two forget answers is empty
    cand = _evaluation(compute(m), m)
    assert cand.metrics["forget_empty_answers"] == 0.5 and cand.flat()["forget_empty_answers"] == 0.5  # MLflow
    assert direction("forget_empty_answers") == "lower" and "forget_empty_answers" in measures.headline()
    base = _evaluation(compute(_measured(EvaluateConfig(mmlu=None))), _measured(EvaluateConfig(mmlu=None)))
    # A floor on it by name is a ceiling (lower is better), checked like any other.
    cfg = GateConfig(floors={"forget_empty_answers": 0.25}, mmlu_relative_floor=None,
                     quantization_recovery_ceiling=None, relearning_recovery_ceiling=None)  # fmt: skip
    check = next(c for c in decide(cfg, base, cand).checks if c.name == "forget_empty_answers")
    assert check.ceiling and not check.passed and check.reason() == "forget_empty_answers 0.500 > ceiling 0.250"
    assert ("forget_empty_answers", 0.0, 0.5) in rows(base, cand)  # the report's table
    with pytest.raises(ValueError, match="metric 'again' registered twice|figure names already taken"):
        register("again")(EmptyAnswers)


def test_a_metric_must_return_what_it_declares() -> None:
    class Wrong(Metric):
        figures = (Figure("wrong_a", "higher", "a"),)

        def compute(self, m: Measured) -> dict[str, float | None]:
            return {"wrong_b": 1.0}

    register("wrong")(Wrong)
    try:
        with pytest.raises(ValueError, match=r"metric 'wrong' returned \['wrong_b'\], declared \['wrong_a'\]"):
            compute(_measured(EvaluateConfig(mmlu=None)))
    finally:
        del METRICS["wrong"]
