"""The gate's checks and reasons on hand-made evaluations, and the report as a person sees it: rendered
by headless Chromium (Debian's package; `make test` installs it) to a screenshot that is checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amnesia.core.config import ConfigError, parse_model
from amnesia.results.evaluation import Evaluation
from amnesia.results.gate import GateResult
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.gate.stage import decide, forget_score, run_gate
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext


def _ev(
    role: str, forget: tuple[float, float], retain: tuple[float, float], mmlu: float | None, auc: float
) -> Evaluation:
    return Evaluation(
        role=role, model_uri=f"/models/{role}", model_digest="d" * 64, uri=f"/evals/{role}", digest="e" * 64,
        key=None, cached=False,
        forget={"Task2": {"knowledge": forget[0], "regurgitation": forget[1]}},
        retain={"Task2": {"knowledge": retain[0], "regurgitation": retain[1]}},
        retain_held_out={"Task2": {"knowledge": retain[0] - 0.1, "regurgitation": retain[1] - 0.1}},
        task_aggregate=0.5, mia_auc=auc, mia_score=1 - 2 * abs(auc - 0.5), mmlu=mmlu, mmlu_macro=mmlu,
        mmlu_subjects={"astronomy": mmlu or 0.0}, mmlu_questions=10, mmlu_sampling="test, 1 subjects, 0-shot",
        final=None, counts={}, seconds=1.0,
        # attacked as robustly as it was unlearned: no recovery (tests/test_attacks.py has the leaky ones)
        attacks={v: {"knowledge": forget[0]} for v in ("none", "quant.int4-g128-asym", "rtt")},
    )  # fmt: skip


BASE = _ev("base", (1.0, 1.0), (1.0, 0.95), 0.60, 1.0)


def test_a_good_candidate_passes_with_every_check_listed() -> None:
    cand = _ev("candidate", (0.05, 0.3), (0.95, 0.9), 0.55, 0.7)
    verdict = decide(GateConfig(), BASE, cand)
    assert verdict.passed
    assert forget_score(cand.forget) == pytest.approx(2 / (1 / 0.95 + 1 / 0.7))
    assert [c.name for c in verdict.checks] == ["forget_score", "retain_score", "mmlu_relative_to_base",
        "held_out_retain_relative_to_base", "quantization_recovery", "relearning_recovery"]  # fmt: skip
    assert verdict.reasons[2] == "mmlu_relative_to_base 0.917 >= floor 0.750"
    assert verdict.reasons[4] == "quantization_recovery 0.000 <= ceiling 0.100"


def test_failures_name_the_check_and_the_numbers() -> None:
    cand = _ev("candidate", (0.5, 0.9), (0.95, 0.9), 0.40, 0.99)
    cfg = GateConfig(forget_task_floor=0.5, mia_floor=0.2, floors={"retain.Task2.knowledge": 0.97})
    verdict = decide(cfg, BASE, cand)
    assert not verdict.passed
    assert verdict.reasons == [
        "forget_score 0.167 < floor 0.600",
        "forget_score.Task2 0.167 < floor 0.500",
        "mmlu_relative_to_base 0.667 < floor 0.750",
        "mia_score 0.020 < floor 0.200",
        "retain.Task2.knowledge 0.950 < floor 0.970",
    ]
    assert [c.code() for c in verdict.checks if not c.passed][
        0
    ] == "forget_score=0.167/0.600"  # hmean(1 - 0.5, 1 - 0.9) = 2 / 12


def test_an_unmeasured_floor_fails() -> None:
    verdict = decide(GateConfig(mmlu_floor=0.3), BASE, _ev("candidate", (0.0, 0.0), (1.0, 1.0), None, 0.5))
    assert not verdict.passed and "mmlu: not measured (floor 0.300)" in verdict.reasons


def test_thresholds_must_lie_in_0_1() -> None:
    with pytest.raises(ConfigError, match="gate: mmlu_relative_floor: Input should be less than or equal to 1"):
        parse_model(GateConfig, {"mmlu_relative_floor": 1.5}, "gate")
    with pytest.raises(ConfigError, match=r"floors must lie in \[0, 1\]"):
        parse_model(GateConfig, {"floors": {"mmlu": 2}}, "gate")
    with pytest.raises(ConfigError, match=r"floors: 'mmlu_acc' is not a figure we report"):
        parse_model(GateConfig, {"floors": {"mmlu_acc": 0.5}}, "gate")
    with pytest.raises(ConfigError, match=r"floors: 'mia_auc' is best at a target, not higher or lower"):
        parse_model(GateConfig, {"floors": {"mia_auc": 0.5}}, "gate")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium not found: `make test` installs Debian's chromium package (apt-get install chromium)")
    return found


@pytest.mark.parametrize("good", [True, False])
def test_report_renders_in_a_headless_browser(tmp_path: Path, good: bool) -> None:
    store = ArtifactStore()
    ctx = RunContext("report-run", str(tmp_path / "runs" / "report-run"), store)
    cand = (
        _ev("candidate", (0.05, 0.3), (0.95, 0.9), 0.55, 0.7)
        if good
        else _ev("candidate", (0.9, 0.9), (0.5, 0.5), 0.2, 1.0)
    )
    result = run_gate(GateConfig(), ctx, BASE, cand)
    assert result.passed is good
    folder = Path(result.report_uri)
    html = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    assert ("Gate: PASS" if good else "Gate: FAIL") in html and ("**Gate: PASS**" if good else "**Gate: FAIL**") in md
    assert "| forget.Task2.knowledge | ↓ | 1.000 | " in md
    assert "![Forget / retain trade-off](figure0_tradeoff.png)" in md
    assert store.verify(result.report_uri).digest == result.report_digest
    assert GateResult.load(store, result.report_uri) == result  # the verdict reads back whole, checks included

    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1800",
         f"--screenshot={shot}", (folder / "report.html").as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert img.shape[:2] == (1800, 1200) and img.std() > 20
    # The verdict banner is drawn: green (#1f8a4c) for a pass, red (#c0392b) for a fail, near the top.
    colour = np.array([0x1F, 0x8A, 0x4C] if good else [0xC0, 0x39, 0x2B])
    banner = (np.abs(img[:200] - colour).sum(-1) < 30).sum()
    assert banner > 1000
    # The trade-off figure is inline (decoded by the browser): its blue and red markers are on the page.
    assert (np.abs(img - np.array([0x1F, 0x77, 0xB4])).sum(-1) < 30).sum() > 50  # tab:blue, the base model


def test_each_request_and_each_earlier_one_is_checked_on_its_own() -> None:
    """One person back fails the gate by name, though the mean over everyone would pass."""
    from amnesia.results.gate import tag_codes
    from amnesia.results.plan import ObligationRef, RunPlan
    from amnesia.stages.gate.report import ReportInputs, markdown, render_html
    from amnesia.storage.obligations import PersonScores

    kept = PersonScores(items=8, knowledge=0.0, regurgitation=0.2, forget_score=0.889, extraction=0.125)
    back = PersonScores(items=8, knowledge=1.0, regurgitation=0.95, forget_score=0.0)
    refs = [ObligationRef(request_id=f"REQ-{i}", documents=[f"doc{i}"], items=8, fulfilled_by="1") for i in range(40)]
    ids = [r.request_id for r in refs]
    plan = RunPlan.none("m", "/models/base").model_copy(
        update={"obligations": refs, "earlier": ids, "sampling": "all 40 active obligations"}
    )
    figures = {r.request_id: kept for r in refs} | {"REQ-7": back}
    cand = _ev("candidate", (0.05, 0.3), (0.95, 0.9), 0.55, 0.7).model_copy(
        update={"obligations": figures, "requests": {"NEW-1": kept}}
    )
    verdict = decide(GateConfig(), BASE, cand, plan)
    assert not verdict.passed and verdict.reasons == ["obligation.REQ-7.forget_score 0.000 < floor 0.300"]
    assert [c.name for c in verdict.checks if c.name.startswith("request.")] == [
        "request.NEW-1.forget_score", "request.NEW-1.extraction"]  # fmt: skip
    code = tag_codes(verdict.checks)  # 47 checks in one MLflow tag: counted, the failed one named
    assert "requests_forgotten=1/1" in code and "obligations_kept=39/40" in code and "came_back=REQ-7" in code
    assert len(code) <= 480
    missing = cand.model_copy(update={"obligations": {k: v for k, v in figures.items() if k != "REQ-3"}})
    assert "obligation.REQ-3.forget_score: not measured (floor 0.300)" in decide(
        GateConfig(), BASE, missing, plan
    ).reasons
    fine = cand.model_copy(update={"obligations": {r.request_id: kept for r in refs}})
    passed = decide(GateConfig(), BASE, fine, plan)
    assert passed.passed and passed.reasons[-1] == ("earlier requests: all 40 still forgotten (lowest forget score "
                                                    "0.889, REQ-0; floor 0.300)")  # fmt: skip
    inputs = ReportInputs("run-1", BASE, cand, verdict, {}, [], plan)
    page, md = render_html(inputs), markdown(inputs, {})
    assert "Earlier requests (standing obligations)" in page and "40 of 40 standing obligations checked" in page
    assert '<tr class="failed"><td>REQ-7</td><td>v1</td><td class=n>8</td>' in page
    assert "| REQ-7 | v1 | 8 | 1.000 | 0.950 | 0.000 | FAIL |" in md
