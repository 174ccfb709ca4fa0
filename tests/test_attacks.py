"""Attacks on forgetting: the quantizer pinned to hand-computed values, the recovery formula, the RTT
folds and fine-tune, the gate's ceilings and the held-out floor, and the report's attack section."""

from __future__ import annotations

import pytest
import torch

from amnesia.results.figures import comparisons, recoveries
from amnesia.science.attack_config import AttackConfig, QuantizationAttackConfig, RelearningAttackConfig
from amnesia.science.attacks import folds, means, run_attacks
from amnesia.science.metrics.aggregate import recovery
from amnesia.science.quantize import NF4, QuantizeError, nf4_tensor, quantize_tensor, quantized_copy
from amnesia.science.records import UnlearningRecord
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.gate.stage import decide
from tests.test_gate import _ev


def test_quantizer_matches_hand_computed_values() -> None:
    w = torch.tensor([[-1.0, -0.5, 0.25, 1.0, 0.1, 0.2, 0.3, 0.7]])
    # 2 bits, asymmetric, groups of 4. Group 1: min -1, max 1 -> scale 2/3, zero round(1.5) = 2;
    # q = clamp(round(w / scale) + 2, 0, 3) = [0, 1, 2, 3] -> (q - 2) * 2/3.
    # Group 2: min 0 (clamped), max 0.7 -> scale 0.7/3, zero 0; q = round([0.43, 0.86, 1.29, 3]) = [0, 1, 1, 3].
    got = quantize_tensor(w, bits=2, group_size=4, symmetric=False)
    s2 = 0.7 / 3
    want = [-4 / 3, -2 / 3, 0.0, 2 / 3, 0.0, s2, s2, 3 * s2]
    assert got[0].tolist() == pytest.approx(want, abs=1e-6)
    # 4 bits, symmetric, one group: scale 2 / 15, zero 8; w * 7.5 = [-6.75, -3.75, 1.875, 7.5, 0.75, 1.5,
    # 2.25, 5.25] rounds to [-7, -4, 2, 8, 1, 2, 2, 5]; +8 clamped to 15: the top value 8 becomes 7.
    w[0, 0] = -0.9
    got = quantize_tensor(w, bits=4, group_size=0, symmetric=True)
    assert got[0].tolist() == pytest.approx([x * 2 / 15 for x in (-7, -4, 2, 7, 1, 2, 2, 5)], abs=1e-6)
    # 8 bits barely moves a weight; a group size that does not divide the row is padded; zeros stay zero.
    x = torch.randn(3, 200)
    assert (quantize_tensor(x, 8, 128, False) - x).abs().max() < (x.max() - x.min()) / 255
    assert quantize_tensor(torch.zeros(2, 5), 4, 4, True).abs().max() == 0
    with pytest.raises(QuantizeError, match="bits must lie in 2..8"):
        quantize_tensor(x, 1, 128, True)


def test_nf4_matches_hand_computed_values() -> None:
    # Block 1 (absmax 1): 0.5 lies nearer 0.4407 than 0.5626; 0.1 nearer 0.0796 than 0.1609.
    # Block 2 (absmax 2): halves [0.3, -0.2, 0.0, 1.0] -> 0.3379, -0.1848, 0, 1 -> times 2.
    w = torch.tensor([[0.5, -1.0, 0.25, 0.1], [0.6, -0.4, 0.0, 2.0]])
    got = nf4_tensor(w, block=4)
    assert got[0].tolist() == pytest.approx([0.44070983, -1.0, 0.24611230, 0.07958030], abs=1e-6)
    assert got[1].tolist() == pytest.approx([2 * 0.33791524, 2 * -0.18477343, 0.0, 2.0], abs=1e-6)
    # Blocks run over the flattened matrix (bitsandbytes' layout): one block of 8 spans both rows, so the
    # first row is scaled by the second row's absmax 2: -1 -> -0.5 -> -0.5251; 0.5 -> 0.25 -> 0.2461.
    straddle = nf4_tensor(w, block=8)
    assert straddle[0, :2].tolist() == pytest.approx([2 * 0.24611230, 2 * -0.52507305], abs=1e-6)
    assert nf4_tensor(torch.zeros(2, 64)).abs().max() == 0 and len(set(NF4)) == 16


def test_quantized_copy_leaves_the_model_and_its_head_alone() -> None:
    from tests.test_trace import _tiny

    for family in ("llama", "gpt2"):
        model = _tiny(family)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        q = quantized_copy(model, bits=4, group_size=16, symmetric=False)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
        changed = [k for k, v in q.state_dict().items() if not torch.equal(before[k], v)]
        assert changed and not any("embed" in k or "wte" in k or "lm_head" in k for k in changed), family


def test_recovery_formula() -> None:
    assert recovery(base=1.0, unlearned=0.1, attacked=0.55) == pytest.approx(0.5)
    assert recovery(1.0, 0.1, 0.05) == 0.0 and recovery(1.0, 0.1, 1.0) == 1.0  # clipped
    assert recovery(0.8, 0.79, 0.8) == 0.0  # nothing was removed: nothing to recover


def _records(people: int, per: int = 2) -> list[UnlearningRecord]:
    return [
        UnlearningRecord(id=f"doc{p}{'qa' if i % 2 else 'sc'}{i}", input=f"q{p}-{i}", output=f"a{p}", task="Task2")
        for p in range(people)
        for i in range(per)
    ]


def test_folds_keep_a_person_together_and_are_seeded() -> None:
    recs = _records(7)
    parts = folds(recs, 3, seed=0)
    assert len(parts) == 3 and sorted(r.id for p in parts for r in p) == sorted(r.id for r in recs)
    for part in parts:
        assert all(
            {r.document_id for r in part}.isdisjoint({r.document_id for r in other})
            for other in parts
            if other is not part
        )
    assert [[r.id for r in p] for p in parts] == [[r.id for r in p] for p in folds(recs, 3, seed=0)]
    assert len(folds(recs, 50, 0)) == 7  # no more folds than people
    one = _records(1, per=4)  # a single person: their facts are the folds
    assert sorted(len(p) for p in folds(one, 5, 0)) == [1, 1, 1, 1] and folds(one[:1], 5, 0) == []
    assert means(recs, [1.0] * 7 + [0.0] * 7) == {"knowledge": 3 / 7, "regurgitation": 4 / 7, "all": 0.5}


def test_relearning_finetune_brings_back_what_it_trains_on(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """RTT end to end on a tiny model: fine-tuning on the other folds raises the loss-free score of a
    trained-on person, measured by the scorer the evaluation passes in."""
    from amnesia.science.attacks import finetune
    from amnesia.storage.models import load_model

    loaded = load_model(str(tiny_model_dir))
    model, tok = loaded.model, loaded.tokenizer
    recs = [UnlearningRecord(id=f"doc{i}qa0", input="What is the answer?", output="42", task="Task2") for i in range(4)]
    cfg = RelearningAttackConfig(folds=2, steps=30, lr=3e-3, batch_size=4)

    def nll(m) -> float:  # type: ignore[no-untyped-def]
        from amnesia.science.unlearning.data import collate, encode
        from amnesia.science.unlearning.methods.base import nll as ce

        with torch.no_grad():
            return float(ce(m, collate([encode(tok, recs[0], eos=False)], tok.pad_token_id)))

    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune(model, tok, recs[1:], cfg, "raw")
    assert nll(tuned) < nll(model) / 2  # it learnt the answer it was shown (the same text, other people)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was tuned
    again = finetune(model, tok, recs[1:], cfg, "raw")
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), again.state_dict().values(), strict=True))

    calls: list[int] = []

    def score(m, rs):  # type: ignore[no-untyped-def]
        calls.append(len(rs))
        return [0.5] * len(rs)

    cfg2 = AttackConfig(quantization=QuantizationAttackConfig(bits=[4], schemes=["sym"]), relearning=cfg)
    figures, rows = run_attacks(cfg2, model, tok, recs, score)
    assert set(figures) == {"quant.int4-g128-sym", "rtt"} and figures["rtt"]["all"] == 0.5
    assert len(rows) == 8 and sum(calls) == 8  # every item once per attack (RTT: once, in its held-out fold)


def _attacked(role: str, plain: float, quant: float, rtt: float, held_out: float = 0.9):  # type: ignore[no-untyped-def]
    ev = _ev(role, (1 - plain, 1 - plain), (1.0, 0.95), 0.6, 0.5)
    figures = {"none": {"knowledge": plain, "all": plain}, "quant.int4-g128-asym": {"knowledge": quant, "all": quant},
               "rtt": {"knowledge": rtt, "all": rtt}}  # fmt: skip
    held = {"Task2": {"knowledge": held_out, "regurgitation": held_out}}
    return ev.model_copy(update={"attacks": figures, "retain_held_out": held})


def test_the_gate_fails_a_candidate_an_attack_undoes() -> None:
    base = _attacked("base", plain=1.0, quant=0.95, rtt=1.0)
    robust = _attacked("candidate", plain=0.1, quant=0.12, rtt=0.2)
    assert recoveries(base, robust)["recovery.rtt.knowledge"] == pytest.approx(0.1 / 0.9)
    verdict = decide(GateConfig(forget_floor=None, retain_floor=None), base, robust)
    assert verdict.passed, verdict.reasons
    leaky = _attacked("candidate", plain=0.1, quant=0.6, rtt=0.2)  # 4-bit brings back 0.5 / 0.9 of it
    verdict = decide(GateConfig(forget_floor=None, retain_floor=None), base, leaky)
    failed = [c for c in verdict.checks if not c.passed]
    assert [c.name for c in failed] == ["quantization_recovery"] and failed[0].ceiling
    assert failed[0].reason() == "quantization_recovery 0.556 > ceiling 0.100"
    assert failed[0].code() == "quantization_recovery=0.556/max0.100"
    off = GateConfig(forget_floor=None, retain_floor=None, quantization_recovery_ceiling=None)
    assert decide(off, base, leaky).passed  # switched off per config


def test_collateral_damage_to_people_in_neither_set_fails_the_gate() -> None:
    base = _attacked("base", 1.0, 1.0, 1.0, held_out=1.0)
    hurt = _attacked("candidate", 0.1, 0.1, 0.1, held_out=0.44)  # the demo run that passed before
    assert comparisons(base, hurt)["held_out_retain_relative_to_base"] == pytest.approx(0.44)
    verdict = decide(GateConfig(), base, hurt)
    assert not verdict.passed and any(r.startswith("held_out_retain_relative_to_base 0.440 < floor 0.900")
                                      for r in verdict.reasons)  # fmt: skip


def test_unmeasured_attacks_fail_and_a_config_that_cannot_measure_them_is_refused() -> None:
    base, cand = (
        _ev(r, f, (1, 1), 0.6, 0.5).model_copy(update={"attacks": {}}) for r, f in (("base", (1, 1)), ("c", (0, 0)))
    )
    verdict = decide(GateConfig(), base, cand)  # evaluations from before the attacks existed
    assert "quantization_recovery: not measured (ceiling 0.100)" in verdict.reasons
    no_attacks = EvaluateConfig(attacks=None)
    assert GateConfig().unmeasured(no_attacks).startswith("quantization_recovery_ceiling: evaluate.attacks")
    assert (
        GateConfig(quantization_recovery_ceiling=None, relearning_recovery_ceiling=None).unmeasured(no_attacks) is None
    )


def test_the_report_shows_each_attack_with_its_parts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from amnesia.stages.gate.report import ReportInputs, attack_rows, render_html

    base = _attacked("base", 1.0, 0.95, 1.0)
    cand = _attacked("candidate", 0.1, 0.6, 0.2)
    rows = attack_rows(base, cand)
    assert ("quant.int4-g128-asym", "knowledge", "1.000", "0.950", "0.100", "0.600", "0.556") in rows
    page = render_html(ReportInputs("r", base, cand, decide(GateConfig(), base, cand), {}))
    assert "Attacks on forgetting" in page and "candidate attacked" in page and "≤ 0.100" in page


def test_a_weak_unlearning_run_is_caught_by_relearning(demo_build, store, s3_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Eight steps of plain gradient ascent on the demo model: it forgets a little, and relearning on the other
    folds brings most of it back; the gate fails it on that ceiling. Not asserted: its 4-bit recovery, a
    machine's figure (0.26 on an Intel CI machine, 0.05 on an AMD one: the weights it moved differ). A weaker
    run (lr 1e-4) that int4 undoes moves one or two knowledge items only: too few to assert (README)."""
    from amnesia.demo.prepare import demo_evaluate_config, demo_split_config, demo_unlearn_config
    from amnesia.stages.evaluate.stage import run_evaluate
    from amnesia.stages.split.stage import run_split
    from amnesia.stages.unlearn.stage import run_unlearn
    from amnesia.storage.context import RunContext
    from amnesia.storage.requests import RequestQueue, load_requests_uri
    from amnesia.storage.uri import join

    RequestQueue(store, s3_prefix).submit(load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl")))
    ctx = RunContext("weak", f"{s3_prefix}/runs/weak", store)
    split = run_split(demo_split_config(demo_build.world_uri), ctx)
    weak = demo_unlearn_config().model_copy(
        update={"method": "grad_ascent", "method_args": {}, "max_steps": 8, "early_stop_forget_exact": None}
    )
    cand = run_unlearn(weak, ctx, demo_build.model_uri, split, [0, 1])
    cfg = demo_evaluate_config(demo_build.world_uri)
    base_ev = run_evaluate(cfg, ctx, demo_build.model_uri, split, "base")
    cand_ev = run_evaluate(cfg, ctx, cand.uri, split, "candidate")
    assert base_ev.plain["all"] > cand_ev.plain["all"] + 0.05  # it did forget something
    figures = comparisons(base_ev, cand_ev)
    print({k: round(v, 3) for k, v in figures.items() if v is not None})
    verdict = decide(GateConfig(), base_ev, cand_ev)
    assert "relearning_recovery" in {c.name for c in verdict.checks if not c.passed}, verdict.reasons
    assert figures["relearning_recovery"] > 0.4  # RTT brings most of it back (Deeb & Roger: 88%)
