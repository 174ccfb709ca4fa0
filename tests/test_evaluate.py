"""Stage 4 on real models: batched generation and losses equal their one-by-one versions, MMLU through
the loader on the shared data, and a scored, cached, lineage-recorded evaluation of the demo model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from amnesia.demo.base_model import TrainConfig, build_model, train_tokenizer
from amnesia.demo.prepare import DemoArtifacts, demo_evaluate_config, demo_split_config
from amnesia.results.evaluation import Evaluation
from amnesia.results.split import SplitResult
from amnesia.science.generation import greedy_generate
from amnesia.science.mmlu import letter_ids, sample, score_mmlu
from amnesia.science.prompts import mmlu_prompt
from amnesia.science.records import MIADocument
from amnesia.stages.evaluate.config import EvaluateConfig, MMLUConfig
from amnesia.stages.evaluate.stage import document_losses, run_evaluate
from amnesia.stages.split.stage import run_split
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Lineage, Tag
from amnesia.storage.models import load_model
from amnesia.storage.records import load_mmlu, load_records
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join


def _split(store: ArtifactStore, demo: DemoArtifacts, prefix: str) -> SplitResult:
    RequestQueue(store, prefix).submit(load_requests_uri(store, join(demo.world_uri, "requests.jsonl")))
    return run_split(demo_split_config(demo.world_uri), RunContext("p", f"{prefix}/runs/p", store))


def test_batched_generation_and_losses_equal_one_by_one(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str
) -> None:
    split = _split(store, demo_build, s3_prefix)
    m = load_model(demo_build.model_uri, store=store)
    records = [r for name in ("forget_train", "retain_eval") for r in load_records(split.sets[name].uri, store=store)]
    records = records[::6]  # sc and qa items of both sets, prompts of many lengths
    prompts = [r.input for r in records]
    batched = greedy_generate(m.model, m.tokenizer, prompts, max_new_tokens=64, batch_size=32)
    single = greedy_generate(m.model, m.tokenizer, prompts, max_new_tokens=64, batch_size=1)
    assert len(records) >= 40 and batched == single
    docs = [d.document for d in load_records(split.sets["mia_members"].uri, MIADocument, store=store)]
    together = document_losses(m.model, m.tokenizer, docs, batch_size=16)
    alone = []
    for d in docs:
        ids = torch.tensor([m.tokenizer(d)["input_ids"]])
        with torch.no_grad():
            alone.append(float(m.model(input_ids=ids, labels=ids).loss))
    assert together == pytest.approx(alone, abs=2e-5)  # padded batches differ in float rounding only


def test_mmlu_k_shot_on_the_shared_data(shared_data: Path) -> None:
    subjects = ["astronomy", "virology", "world_religions"]
    questions = sample(load_mmlu(str(shared_data / "mmlu"), "test", subjects), per_subject=4, seed=1)
    dev = load_mmlu(str(shared_data / "mmlu"), "dev", subjects)
    assert len(questions) == 12 and {q.subject for q in questions} == set(subjects)
    assert sample(load_mmlu(str(shared_data / "mmlu"), "test", subjects), 4, 1) == questions  # seeded
    tok = train_tokenizer([mmlu_prompt(q, dev[:5]) for q in questions], vocab_size=400)
    torch.manual_seed(0)
    model = build_model(TrainConfig(layers=2, hidden=32, heads=2, intermediate=64, vocab_size=400, max_len=4096), tok)
    model.eval()
    result = score_mmlu(model, tok, questions, dev, shots=5, batch=5)
    # Independently: one question at a time, the argmax over " A".." D" after its 5-shot prompt.
    letters = letter_ids(tok)
    right = []
    for q in questions:
        shots = [d for d in dev if d.subject == q.subject][:5]
        prompt = mmlu_prompt(q, shots)
        assert prompt.startswith(
            f"The following are multiple choice questions (with answers) about {q.subject.replace('_', ' ')}."
        )
        assert prompt.endswith("Answer:") and prompt.count("Answer:") == 6
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1]
        right.append(int(logits[letters].argmax()) == q.answer)
    assert result.accuracy == pytest.approx(sum(right) / len(right))
    assert result.questions == 12 and set(result.subjects) == set(subjects) and result.shots_reduced == 0


def test_demo_evaluation_is_scored_cached_and_recorded_without_text(
    demo_build: DemoArtifacts, store: ArtifactStore, stack_settings, s3_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    split = _split(store, demo_build, s3_prefix)
    lineage = Lineage("eval-1", settings=stack_settings)
    ctx = RunContext("eval-1", f"{s3_prefix}/runs/eval-1", store, lineage)
    cfg = demo_evaluate_config(demo_build.world_uri)
    with caplog.at_level(logging.INFO, logger="amnesia"):
        first = run_evaluate(cfg, ctx, demo_build.model_uri, split, "base")
    assert Evaluation.load(store, first.uri) == first  # a stored evaluation reads back whole
    # no terminal here: progress comes as log lines, and each phase's last one says it finished
    progress = [r.getMessage().split(",")[0] for r in caplog.records if "(100%)" in r.getMessage()]
    total = sum(first.counts[g] for g in ("forget", "retain", "retain_held_out"))
    mia = first.counts["mia_members"] + first.counts["mia_nonmembers"]
    attacked = first.counts["forget"] * 5  # 4 quantization variants and the relearning folds
    assert progress == [
        f"evaluate base: generating: item {total}/{total} (100%)",
        f"evaluate base: extraction (8 samples each): item {first.counts['forget']}/{first.counts['forget']} (100%)",
        f"evaluate base: attacks: item {attacked}/{attacked} (100%)",
        f"evaluate base: MIA: document {mia}/{mia} (100%)",
        f"evaluate base: MMLU: question {first.mmlu_questions}/{first.mmlu_questions} (100%)",
    ]
    assert not first.cached and first.model_digest == demo_build.model_digest
    assert first.forget["Task2"]["knowledge"] >= 0.95 and first.task_aggregate < 0.1  # it remembers everything
    assert first.mia_auc is not None and first.mia_auc > 0.9 and first.mmlu is not None and first.mmlu >= 0.9
    assert first.counts["forget"] == 128 and first.mmlu_sampling == "test, all subjects, all questions, 0-shot"
    again = run_evaluate(
        cfg, RunContext("eval-2", f"{s3_prefix}/runs/eval-2", store), demo_build.model_uri, split, "base"
    )
    assert again.cached and again.flat() == first.flat() and again.digest == first.digest
    other = cfg.model_copy(update={"max_new_tokens": 63})  # another config: another key
    assert (
        run_evaluate(other, RunContext("e3", f"{s3_prefix}/runs/e3", store), demo_build.model_uri, split, "base").key
        != first.key
    )

    items = [json.loads(line) for line in store.get_bytes(join(first.uri, "items.jsonl")).splitlines()]
    assert {i["set"] for i in items} == {"forget", "retain", "retain_held_out"}
    forget = [i for i in items if i["set"] == "forget"]  # the extraction test: per forget item, a boolean
    assert all(isinstance(i["extracted"], bool) for i in forget) and sum(i["extracted"] for i in forget) >= 115
    # The attacks: per item in S3 (ids and scores), means in the result; the memorising base keeps it all.
    attacked_items = [json.loads(x) for x in store.get_bytes(join(first.uri, "attacks.jsonl")).splitlines()]
    assert len(attacked_items) == attacked and set(attacked_items[0]) == {"attack", "id", "score"}
    assert set(first.attacks) == {"none", "quant.int8-g128-sym", "quant.int8-g128-asym", "quant.int4-g128-sym",
                                  "quant.int4-g128-asym", "rtt"}  # fmt: skip
    assert all(first.attacks[v]["all"] >= 0.9 for v in first.attacks)
    run = lineage.client.search_runs([lineage.experiment_id], f"tags.`{Tag.PIPELINE_RUN_ID}` = 'eval-1'")
    stage = next(r for r in run if r.data.tags.get(Tag.STAGE) == "evaluate-base")
    assert stage.data.metrics["forget.Task2.knowledge"] == first.forget["Task2"]["knowledge"]
    assert stage.data.metrics["attack.rtt.all"] == first.attacks["rtt"]["all"]
    assert stage.data.tags[Tag.EVALUATION_DIGEST] == first.digest
    gens = [
        json.loads(line)["generation"] for line in store.get_bytes(join(first.uri, "generations.jsonl")).splitlines()
    ]
    logged = json.dumps([stage.data.params, stage.data.tags, list(stage.data.metrics)])
    assert not [g for g in gens if len(g.strip()) >= 5 and g.strip() in logged]


def test_mmlu_config_validates() -> None:
    from amnesia.core.config import ConfigError, parse_model

    with pytest.raises(ConfigError, match=r"evaluate: mmlu.shots: Input should be less than or equal to 10"):
        parse_model(EvaluateConfig, {"mmlu": {"shots": 11}}, "evaluate")
    assert parse_model(EvaluateConfig, {"mmlu": None}, "e").mmlu is None
    # a gate floor on a number the evaluation will not produce fails at load, naming the field
    from amnesia.runtime.pipeline_config import PipelineConfig
    from amnesia.stages.gate.config import GateConfig

    no_mmlu = parse_model(EvaluateConfig, {"mmlu": None}, "e")
    assert GateConfig().unmeasured(no_mmlu).startswith("mmlu_relative_floor: evaluate.mmlu is null")
    assert GateConfig(mmlu_relative_floor=None).unmeasured(no_mmlu) is None
    assert GateConfig(mia_floor=0.5).unmeasured(EvaluateConfig(mia=False)).startswith("mia_floor: evaluate.mia is off")
    run = {"model": "m", "split": {"forget": "f.jsonl", "retain": "r.jsonl"}, "evaluate": {"mmlu": None}}
    with pytest.raises(ConfigError, match=r"run.yaml: gate.mmlu_relative_floor: evaluate.mmlu is null"):
        parse_model(PipelineConfig, run, "run.yaml")
    assert MMLUConfig().uri == "cais/mmlu" and MMLUConfig().shots == 5
