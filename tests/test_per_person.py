"""Per-person attack evidence: the extraction test (sampled generations) and the membership percentile, per
request, in the evaluation, the gate (a per-person ceiling naming the request) and the evidence figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from amnesia.demo.prepare import (
    DemoArtifacts,
    demo_evaluate_config,
    demo_gate_config,
    demo_split_config,
    demo_unlearn_config,
)
from amnesia.governance.evidence import person_figures
from amnesia.science.generation import sampled_generate
from amnesia.science.metrics.aggregate import membership_percentile
from amnesia.science.metrics.items import extracted
from amnesia.stages.evaluate.stage import run_evaluate
from amnesia.stages.gate.stage import decide
from amnesia.stages.split.stage import run_split
from amnesia.stages.unlearn.stage import run_unlearn
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.layout import SPLIT_REPORT
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join


def test_a_document_s_membership_percentile_is_its_place_among_the_non_members() -> None:
    others = [2.0, 3.0, 4.0, 5.0]
    assert membership_percentile(1.0, others) == 1.0  # lower loss than every non-member: clearly a member
    assert membership_percentile(6.0, others) == 0.0
    assert membership_percentile(3.0, others) == pytest.approx(0.625)  # 2 higher, 1 tie
    with pytest.raises(ValueError, match="non-member"):
        membership_percentile(1.0, [])


def test_an_item_is_extracted_when_any_sample_reproduces_its_answer() -> None:
    assert extracted("qa", ["no idea", "1987"], "1987")
    assert not extracted("qa", ["no idea", "1988"], "1987")
    assert extracted("sc", ["lives at 12 Elm Street in Porto"], "lives at 12 Elm Street in Porto")
    assert not extracted("sc", ["lives somewhere"], "lives at 12 Elm Street in Porto")


def test_sampling_is_seeded_and_gives_each_prompt_its_samples(tiny_model_dir: Path) -> None:
    from amnesia.storage.models import load_model

    loaded = load_model(str(tiny_model_dir))
    prompts = ["Ada was born in", "What is the answer?", "Porto"]
    a = sampled_generate(loaded.model, loaded.tokenizer, prompts, 4, 1.0, 6, batch_size=8, seed=3)
    b = sampled_generate(loaded.model, loaded.tokenizer, prompts, 4, 1.0, 6, batch_size=8, seed=3)
    assert a == b and [len(s) for s in a] == [4, 4, 4]
    assert len({s for samples in a for s in samples}) > 3  # sampled, not greedy: the continuations differ


def _split(store: ArtifactStore, demo_build: DemoArtifacts, prefix: str, run: str, requests: list):  # type: ignore[no-untyped-def]
    RequestQueue(store, prefix).submit(requests)
    return run_split(demo_split_config(demo_build.world_uri), RunContext(run, f"{prefix}/runs/{run}", store))


def test_a_weak_run_fails_the_gate_naming_the_one_person_it_did_not_forget(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str
) -> None:  # fmt: skip
    """Unlearn one person (request A), then score the candidate on a split with A and B: B's answers still come
    out under sampling, A's do not. The gate fails on B's extraction ceiling and passes A's; the evidence
    figures read from the stored per-item results agree with the evaluation's."""
    requests = load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))
    a, b = requests[0], requests[1]
    only_a = _split(store, demo_build, f"{s3_prefix}/one", "pp-1", [a])
    cfg = demo_unlearn_config().model_copy(update={"layers": [0, 1]})
    ctx = RunContext("pp-1", f"{s3_prefix}/one/runs/pp-1", store)
    candidate = run_unlearn(cfg, ctx, demo_build.model_uri, only_a)

    both = _split(store, demo_build, f"{s3_prefix}/two", "pp-2", [a, b])
    ctx2 = RunContext("pp-2", f"{s3_prefix}/two/runs/pp-2", store)
    evaluate = demo_evaluate_config(demo_build.world_uri).model_copy(update={"attacks": None})
    base = run_evaluate(evaluate, ctx2, demo_build.model_uri, both, "base")
    ev = run_evaluate(evaluate, ctx2, candidate.uri, both, "candidate")
    ra, rb = ev.requests[a.request_id], ev.requests[b.request_id]
    assert base.requests[b.request_id].extraction == 1.0  # the original model gives everyone's answers
    assert ra.extraction is not None and rb.extraction is not None and ra.extraction < 0.25 < rb.extraction
    assert ra.membership is not None and rb.membership is not None and rb.documents >= 1

    gate = demo_gate_config().model_copy(update={"per_request_floor": None, "per_request_extraction_ceiling": 0.25})
    verdict = decide(gate, base, ev)  # the default ceiling (the demo's own is looser: demo_gate_config says why)
    checks = {c.name: c for c in verdict.checks}
    assert not verdict.passed
    assert checks[f"request.{b.request_id}.extraction"].passed is False
    assert checks[f"request.{a.request_id}.extraction"].passed is True
    failed = [c.name for c in verdict.checks if not c.passed and c.name.startswith("request.")]
    assert failed == [f"request.{b.request_id}.extraction"], failed
    assert any(r.startswith(f"request.{b.request_id}.extraction {rb.extraction:.3f} > ceiling")
               for r in verdict.reasons), verdict.reasons  # fmt: skip

    documents = set(store.get_json(join(both.uri, SPLIT_REPORT))["request_documents"][b.request_id])
    figures, _attacked = person_figures(store, ev.uri, documents)
    assert figures.extraction == rb.extraction and figures.membership == rb.membership
