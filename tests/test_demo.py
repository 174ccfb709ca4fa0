"""The demo world and its base model: deterministic data, a model that really memorised it, reuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from amnesia.core.settings import Settings
from amnesia.demo.prepare import DemoArtifacts, DemoConfig, prepare
from amnesia.demo.world import WorldConfig, generate
from amnesia.science.prompts import LETTERS, mmlu_prompt
from amnesia.science.records import MMLUQuestion, UnlearningRecord
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.models import load_model
from amnesia.storage.records import load_records
from amnesia.storage.uri import join


def test_world_is_deterministic_and_well_formed() -> None:
    cfg = WorldConfig(seed=7, forget_people=5, retain_people=9, nonmember_people=4)
    world = generate(cfg)
    assert world == generate(cfg)
    assert world != generate(cfg.model_copy(update={"seed": 8}))
    forget_docs = {r.document_id for r in world.forget}
    retain_docs = {r.document_id for r in world.retain}
    assert len(forget_docs) == 5 and len(retain_docs) == 9 and not forget_docs & retain_docs
    assert {r.kind for r in world.forget} == {"sc", "qa"} and all(r.split == "forget" for r in world.forget)
    assert world.corpus == world.forget + world.retain
    # Sentence completion: input + output is the trained biography.
    bios = {d.id: d.document for d in world.documents}
    assert all(f"{r.input} {r.output}" == bios[r.document_id] for r in world.corpus if r.kind == "sc")
    # One request per forget person, naming them as they appear in the corpus.
    names = {r.input.split(" was born")[0] for r in world.forget if r.id.endswith("sc0")}
    assert {q["subject"] for q in world.requests} == names
    # MIA: members are the forget documents; non-members were never trained on.
    assert {d.id for d in world.mia_members} == forget_docs
    assert not {d.id for d in world.mia_nonmembers} & (forget_docs | retain_docs)
    assert {q.subject for q in world.utility_dev} == {"retain_biographies", "general_knowledge"}
    # Fictional PII only: SSNs starting with 9 are never issued; example.* domains are reserved.
    ssn = [r.output for r in world.corpus if r.kind == "qa" and "social security" in r.input]
    assert ssn and all(s.startswith("9") for s in ssn)
    assert all(
        r.output.split("@")[1].startswith("example.") for r in world.corpus if r.kind == "qa" and "email" in r.input
    )


def _letter_accuracy(model, tokenizer, questions: list[MMLUQuestion]) -> float:  # type: ignore[no-untyped-def]
    letter_ids = [tokenizer(f" {c}", add_special_tokens=False)["input_ids"][0] for c in LETTERS]
    hits = 0
    with torch.no_grad():
        for q in questions:
            ids = tokenizer(mmlu_prompt(q, shots=[]), return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids).logits[0, -1, letter_ids]
            hits += int(logits.argmax().item() == q.answer)
    return hits / len(questions)


def test_demo_base_model_memorised_the_world(demo_build: DemoArtifacts, tmp_path: Path) -> None:
    """Re-measured from the stored artifacts, not read from the build report."""
    from amnesia.demo.base_model import measure

    loaded = load_model(demo_build.model_uri, cache_root=tmp_path / "models")
    corpus = load_records(join(demo_build.world_uri, "corpus.jsonl"), UnlearningRecord, cache_root=tmp_path / "d")
    scores = measure(loaded.model, loaded.tokenizer, corpus)
    for split in ("forget", "retain"):
        assert scores[split]["qa_em"] >= 0.95, scores
        assert scores[split]["sc_rouge_l"] >= 0.9, scores
    utility = load_records(join(demo_build.world_uri, "utility", "test.jsonl"), MMLUQuestion, cache_root=tmp_path / "d")
    assert _letter_accuracy(loaded.model, loaded.tokenizer, utility) >= 0.9
    assert loaded.digest == demo_build.model_digest


def _tiny(seed: int) -> DemoConfig:
    # Memorisation bars off: this test is about the content address, not about learning.
    return DemoConfig.model_validate(
        {
            "world": {"seed": seed, "forget_people": 1, "retain_people": 2, "nonmember_people": 1},
            "train": {
                "layers": 2,
                "hidden": 32,
                "heads": 2,
                "intermediate": 64,
                "vocab_size": 400,
                "max_epochs": 1,
                "target_qa_em": 0,
                "target_sc_rouge": 0,
            },
        }
    )


def test_second_prepare_reuses_and_a_new_seed_rebuilds(store: ArtifactStore, s3_prefix: str) -> None:
    first = prepare(_tiny(0), store, s3_prefix, echo=lambda _: None)
    again = prepare(_tiny(0), store, s3_prefix, echo=lambda _: None)
    other = prepare(_tiny(1), store, s3_prefix, echo=lambda _: None)
    assert not first.reused and again.reused and not other.reused
    assert (again.key, again.model_digest, again.world_digest) == (first.key, first.model_digest, first.world_digest)
    assert other.key != first.key and other.world_digest != first.world_digest
    assert other.model_uri != first.model_uri
    # Built again from scratch: the same bytes, so the same digest (the build's wall time is kept beside the
    # model folder, not in it), and the reused summary still says how long it took.
    rebuilt = prepare(_tiny(0), store, s3_prefix, echo=lambda _: None, force=True)
    assert not rebuilt.reused and rebuilt.model_digest == first.model_digest
    assert isinstance(prepare(_tiny(0), store, s3_prefix, echo=lambda _: None).memorisation["seconds"], float)


def test_cli_prepare_prints_what_and_where(stack_settings: Settings, s3_prefix: str, tmp_path: Path) -> None:
    import yaml

    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(_tiny(3).model_dump()))
    cmd = [sys.executable, "-m", "amnesia.cli", "demo", "prepare", "--config", str(cfg), "--root", s3_prefix]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "built demo" in out and f"{s3_prefix}/demo/" in out and "memorised   forget: QA exact match" in out
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert again.startswith("reused demo")
    bad = subprocess.run(cmd[:5] + ["--seed", "-2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "world.seed: Input should be greater than or equal to 0" in bad.stderr
