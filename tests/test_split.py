"""Stage 1 — split, against the real stack: validations, determinism, lineage without personal data."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from amnesia.core.settings import Settings
from amnesia.demo.world import World, WorldConfig, generate
from amnesia.science.records import MIADocument, RecordError, UnlearningRecord, write_jsonl
from amnesia.stages.split.config import SplitConfig
from amnesia.stages.split.stage import SETS, SplitError, in_eval, run_split
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Lineage, Tag
from amnesia.storage.records import load_records
from amnesia.storage.requests import ErasureRequest, RequestError, RequestQueue, load_requests


@pytest.fixture(scope="module")
def world() -> World:
    return generate(WorldConfig(seed=11, forget_people=4, retain_people=12, nonmember_people=3))


@pytest.fixture
def files(world: World, tmp_path: Path) -> Path:
    return world.write(tmp_path / "world")


def _cfg(files: Path, **kw: object) -> SplitConfig:
    base = {
        "corpus": str(files / "corpus.jsonl"),
        "requests": str(files / "requests.jsonl"),
        "mia_members": str(files / "mia" / "member.jsonl"),
        "mia_nonmembers": str(files / "mia" / "nonmember.jsonl"),
    }
    return SplitConfig.model_validate(base | kw)


def _ctx(store: ArtifactStore, s3_prefix: str, lineage: Lineage | None = None) -> RunContext:
    run_id = f"t-{uuid.uuid4().hex[:8]}"
    return RunContext(run_id, f"{s3_prefix}/runs/{run_id}", store, lineage)


def _read(uri: str, tmp: Path) -> list[UnlearningRecord]:
    return load_records(uri, UnlearningRecord, cache_root=tmp, allow_empty=True)


def test_requests_become_whole_forget_documents(
    world: World, files: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path
) -> None:
    result = run_split(_cfg(files), _ctx(store, s3_prefix))
    forget_docs = {r.document_id for r in world.forget}
    got = {n: _read(result.sets[n].uri, tmp_path / n) for n in SETS}
    assert {r.document_id for r in got["forget_train"]} == forget_docs
    assert got["forget_eval"] == []  # default: every forget document is trained on
    assert sorted(r.id for r in got["forget_train"]) == sorted(r.id for r in world.forget)
    retain = got["retain_train"] + got["retain_eval"]
    assert sorted(r.id for r in retain) == sorted(r.id for r in world.retain)
    # Documents stay whole, and retain_eval is exactly the documents the seeded hash picks.
    assert not {r.document_id for r in got["retain_train"]} & {r.document_id for r in got["retain_eval"]}
    assert {r.document_id for r in got["retain_eval"]} == {
        r.document_id for r in world.retain if in_eval(r.document_id, 0.2, 0)
    }
    members = load_records(result.sets["mia_members"].uri, MIADocument, cache_root=tmp_path / "m")
    assert {d.id for d in members} == forget_docs
    assert result.request_ids == sorted(q["request_id"] for q in world.requests)
    assert result.sets["mia_nonmembers"].records == 3 and result.warnings == {}


def test_same_inputs_same_bytes_and_one_record_changes_one_set(
    files: Path, store: ArtifactStore, s3_prefix: str
) -> None:
    first = run_split(_cfg(files), _ctx(store, s3_prefix))
    second = run_split(_cfg(files), _ctx(store, s3_prefix))
    assert first.digest == second.digest
    assert {n: i.sha256 for n, i in first.sets.items()} == {n: i.sha256 for n, i in second.sets.items()}

    corpus = load_records(str(files / "corpus.jsonl"))
    target = next(r for r in corpus if r.split == "retain" and r.kind == "qa")
    edited = [r.model_copy(update={"output": r.output + " (corrected)"}) if r.id == target.id else r for r in corpus]
    write_jsonl(edited, files / "corpus.jsonl")
    third = run_split(_cfg(files), _ctx(store, s3_prefix))
    changed = {n for n in first.sets if first.sets[n].sha256 != third.sets[n].sha256}
    expected = "retain_eval" if in_eval(target.document_id, 0.2, 0) else "retain_train"
    assert changed == {expected} and third.digest != first.digest


def test_semeval_setup_with_ready_files(world: World, files: Path, store: ArtifactStore, s3_prefix: str) -> None:
    cfg = SplitConfig(
        forget=str(files / "forget.jsonl"),
        retain=str(files / "retain.jsonl"),
        mia_nonmembers=str(files / "mia" / "nonmember.jsonl"),
    )
    result = run_split(cfg, _ctx(store, s3_prefix))
    assert result.sets["forget_train"].records == len(world.forget) and result.request_digest is None
    assert result.sets["mia_members"].records == 4  # rebuilt from the forget records


def _semeval(tmp: Path, forget: list[UnlearningRecord], retain: list[UnlearningRecord]) -> SplitConfig:
    write_jsonl(forget, tmp / "f.jsonl")
    write_jsonl(retain, tmp / "r.jsonl")
    return SplitConfig(forget=str(tmp / "f.jsonl"), retain=str(tmp / "r.jsonl"))


def R(rid: str, text: str = "t", out: str = "o") -> UnlearningRecord:  # noqa: N802
    return UnlearningRecord(id=rid, input=text, output=out, task="Task2")


@pytest.mark.parametrize(
    ("forget", "retain", "message"),
    [
        ([R("aqa0"), R("aqa0", "x")], [R("bqa0")], r"f\.jsonl: duplicate record id aqa0"),
        ([R("aqa0")], [R("aqa0", "x")], "record aqa0 is in both the forget and the retain set"),
        ([R("aqa0")], [R("aqa1", "x")], r"document a is split across forget \(aqa0\) and retain \(aqa1\)"),
        (
            [R("aqa0", "Where is  ADA?", "Porto")],
            [R("bqa0", "where is ada?", "porto ")],
            "forget record aqa0 and retain record bqa0 have the same text",
        ),
    ],
)
def test_semeval_inputs_that_would_make_the_split_wrong(
    tmp_path: Path, store: ArtifactStore, s3_prefix: str, forget: list, retain: list, message: str
) -> None:  # type: ignore[type-arg]
    with pytest.raises(SplitError, match=message):
        run_split(_semeval(tmp_path, forget, retain), _ctx(store, s3_prefix))


def test_empty_and_malformed_inputs(tmp_path: Path, store: ArtifactStore, s3_prefix: str) -> None:
    (tmp_path / "f.jsonl").write_text("")
    write_jsonl([R("bqa0")], tmp_path / "r.jsonl")
    cfg = SplitConfig(forget=str(tmp_path / "f.jsonl"), retain=str(tmp_path / "r.jsonl"))
    with pytest.raises(RecordError, match=r"f\.jsonl: empty \(no records\)"):
        run_split(cfg, _ctx(store, s3_prefix))
    (tmp_path / "f.jsonl").write_text(json.dumps({"id": "no-suffix", "input": "i", "output": "o", "task": "T"}))
    with pytest.raises(RecordError, match=r"f\.jsonl: line 1: field 'id'.*must end in sc<n>"):
        run_split(cfg, _ctx(store, s3_prefix))


def _requests(tmp: Path, rows: list[dict]) -> Path:  # type: ignore[type-arg]
    path = tmp / "req.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


REQ = {"request_id": "REQ-1", "subject": "Nobody Atall", "received_at": "2026-02-01T10:00:00Z", "ground": "a"}


def test_request_that_matches_nothing(
    files: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path, world: World
) -> None:
    rows = [*world.requests, REQ]
    cfg = _cfg(files, requests=str(_requests(tmp_path, rows)))
    with pytest.raises(SplitError, match="request REQ-1: its subject and ids match nothing in the corpus"):
        run_split(cfg, _ctx(store, s3_prefix))
    result = run_split(cfg.model_copy(update={"unmatched_requests": "warn"}), _ctx(store, s3_prefix))
    assert result.warnings == {"unmatched_request": 1} and "REQ-1" in result.request_ids
    only = _cfg(files, requests=str(_requests(tmp_path, [REQ])), unmatched_requests="warn")
    with pytest.raises(SplitError, match="empty forget set"):
        run_split(only, _ctx(store, s3_prefix))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("record_ids", ["nosuchqa0"], "request REQ-1: record nosuchqa0 is not in the corpus"),
        ("document_ids", ["nosuch"], "request REQ-1: document nosuch is not in the corpus"),
    ],
)
def test_request_naming_unknown_ids(
    files: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path, field: str, value: list[str], message: str
) -> None:
    cfg = _cfg(files, requests=str(_requests(tmp_path, [REQ | {field: value}])))
    with pytest.raises(SplitError, match=message):
        run_split(cfg, _ctx(store, s3_prefix))


def test_request_naming_a_record_forgets_its_whole_document(
    world: World, files: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path
) -> None:
    target = world.retain[3]
    cfg = _cfg(files, requests=str(_requests(tmp_path, [REQ | {"record_ids": [target.id]}])))
    result = run_split(cfg, _ctx(store, s3_prefix))
    forget = _read(result.sets["forget_train"].uri, tmp_path / "f")
    assert {r.document_id for r in forget} == {target.document_id}
    assert len(forget) == len([r for r in world.retain if r.document_id == target.document_id])


def test_retain_record_mentioning_a_forgotten_subject(
    world: World, files: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path
) -> None:
    victim = world.requests[0]["subject"]
    corpus = load_records(str(files / "corpus.jsonl"))
    colleague = next(r for r in corpus if r.split == "retain" and r.kind == "sc")
    mentioned = colleague.model_copy(update={"output": colleague.output + f" They once worked with {victim.upper()}."})
    write_jsonl([mentioned if r.id == colleague.id else r for r in corpus], files / "corpus.jsonl")
    with pytest.raises(
        SplitError,
        match=f"retain record {colleague.id} mentions the subject of request {world.requests[0]['request_id']}",
    ):
        run_split(_cfg(files), _ctx(store, s3_prefix))
    moved = run_split(_cfg(files, retain_mentions="move"), _ctx(store, s3_prefix))
    # The moved document has no entry in the given MIA member file: rebuilt from its records, and counted.
    assert moved.warnings == {"retain_document_moved_to_forget": 1, "mia_member_rebuilt_from_records": 1}
    forget_docs = {r.document_id for r in _read(moved.sets["forget_train"].uri, tmp_path / "f")}
    assert colleague.document_id in forget_docs and len(forget_docs) == 5


def test_mia_checks(world: World, files: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    trained = MIADocument(id=world.retain[0].document_id, document="x")
    write_jsonl([*load_records(str(files / "mia" / "nonmember.jsonl"), MIADocument), trained], tmp_path / "nm.jsonl")
    with pytest.raises(SplitError, match=f"MIA non-member {trained.id} is a trained document"):
        run_split(_cfg(files, mia_nonmembers=str(tmp_path / "nm.jsonl")), _ctx(store, s3_prefix))
    # Without a non-member file, corpus records marked 'holdout' are the non-members (never trained).
    corpus = load_records(str(files / "corpus.jsonl"))
    held = {r.document_id for r in corpus if r.split == "retain"}
    held = set(sorted(held)[:2])
    write_jsonl(
        [r.model_copy(update={"split": "holdout"}) if r.document_id in held else r for r in corpus],
        files / "corpus.jsonl",
    )
    result = run_split(_cfg(files, mia_nonmembers=None), _ctx(store, s3_prefix))
    nonmembers = load_records(result.sets["mia_nonmembers"].uri, MIADocument, cache_root=tmp_path / "nm")
    assert {d.id for d in nonmembers} == held
    assert result.sets["retain_train"].documents + result.sets["retain_eval"].documents == 10


def test_forget_train_cannot_end_up_empty(files: Path, store: ArtifactStore, s3_prefix: str) -> None:
    with pytest.raises(SplitError, match="forget_train is empty.*lower split.forget_eval_fraction"):
        run_split(_cfg(files, forget_eval_fraction=0.999), _ctx(store, s3_prefix))


@pytest.mark.parametrize("bad", [{"corpus": "c.jsonl"}, {"forget": "f", "corpus": "c", "requests": "r"}, {}])
def test_config_needs_exactly_one_mode(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match="corpus|forget"):
        SplitConfig.model_validate(bad)


# ---------------------------------------------------------------- requests and the queue


def test_request_file_errors_name_request_and_field(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match=r"req\.jsonl: line 1 \(request REQ-1\): field 'ground'"):
        load_requests(_requests(tmp_path, [REQ | {"ground": "z"}]))
    with pytest.raises(RequestError, match=r"line 1 \(request REQ-1\): field 'received_at': missing"):
        load_requests(_requests(tmp_path, [{k: v for k, v in REQ.items() if k != "received_at"}]))
    with pytest.raises(RequestError, match="request REQ-1 appears twice"):
        load_requests(_requests(tmp_path, [REQ, REQ]))
    (tmp_path / "req.yaml").write_text("- request_id: R-2\n  subject: X\n  received_at: 2026-01-01\n  ground: b\n")
    assert load_requests(tmp_path / "req.yaml")[0].request_id == "R-2"


def test_queue_snapshot_and_fulfil(store: ArtifactStore, s3_prefix: str) -> None:
    queue = RequestQueue(store, s3_prefix)
    reqs = [ErasureRequest.model_validate(REQ | {"request_id": f"REQ-{i}"}) for i in (3, 1, 2)]
    queue.submit(reqs)
    with pytest.raises(RequestError, match="request REQ-1 is already pending"):
        queue.submit(reqs[1:2])
    snap = queue.snapshot(f"{s3_prefix}/snap1.jsonl")
    assert snap.request_ids == ["REQ-1", "REQ-2", "REQ-3"]
    assert queue.snapshot(f"{s3_prefix}/snap2.jsonl").digest == snap.digest
    queue.fulfil(["REQ-2"])
    assert [r.request_id for r in queue.list("pending")] == ["REQ-1", "REQ-3"]
    assert [r.request_id for r in queue.list("fulfilled")] == ["REQ-2"]
    with pytest.raises(RequestError, match="request REQ-2 is already fulfilled"):
        queue.submit(reqs[2:3])
    with pytest.raises(RequestError, match="REQ-9 is not pending"):
        queue.fulfil(["REQ-9"])


def test_split_from_the_pending_queue(world: World, files: Path, store: ArtifactStore, s3_prefix: str) -> None:
    RequestQueue(store, s3_prefix).submit([ErasureRequest.model_validate(r) for r in world.requests[:2]])
    result = run_split(_cfg(files, requests="queue"), _ctx(store, s3_prefix))
    assert result.request_ids == sorted(r["request_id"] for r in world.requests[:2])
    assert result.sets["forget_train"].documents == 2


# ---------------------------------------------------------------- personal data


def test_no_forget_text_in_mlflow_or_logs(
    world: World,
    files: Path,
    store: ArtifactStore,
    s3_prefix: str,
    stack_settings: Settings,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    lineage = Lineage(f"split-{uuid.uuid4().hex[:8]}", experiment="split-tests", settings=stack_settings)
    with caplog.at_level(logging.DEBUG):
        result = run_split(_cfg(files), _ctx(store, s3_prefix, lineage))

    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    (run,) = client.search_runs(
        [lineage.experiment_id],
        f"tags.`{Tag.STAGE}` = 'split' and tags.`{Tag.PIPELINE_RUN_ID}` = '{lineage.pipeline_run_id}'",
    )
    run = client.get_run(run.info.run_id)
    assert run.data.tags[Tag.REQUEST_DIGEST] == result.request_digest
    assert run.data.tags[Tag.SPLIT_DIGEST] == result.digest
    datasets = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert set(datasets) == set(result.sets)
    assert json.loads(datasets["forget_train"].source)["sha256"] == result.sets["forget_train"].sha256

    secrets = (
        [r.output for r in world.forget] + [r.input for r in world.forget] + [q["subject"] for q in world.requests]
    )
    secrets += [d.document for d in world.mia_members]
    haystack = (
        json.dumps(
            {
                "params": run.data.params,
                "tags": run.data.tags,
                "metrics": run.data.metrics,
                "datasets": [[d.name, d.digest, d.source, d.profile, d.schema] for d in datasets.values()],
            }
        )
        + caplog.text
    )
    report = store.get_json(f"{result.uri}/split_report.json")
    haystack += json.dumps(report)
    leaks = [s for s in secrets if s.lower() in haystack.lower()]
    assert not leaks, f"{len(leaks)} forget strings reached MLflow, the logs or the report"
    assert caplog.text, "the stage should log something (counts), or this scan proves nothing"


def test_a_document_partly_about_the_subject_is_said(
    world: World, files: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path
) -> None:
    """Two records, the subject in one: the share rule (at least 0.5) claims it, and the split says so."""
    subject = "Quinn Alder"
    corpus = load_records(str(files / "corpus.jsonl"))
    pair = [
        UnlearningRecord(id="halfdocqa0", input=f"Where was {subject} born?", output="Tromsø", task="Task2"),
        UnlearningRecord(id="halfdocqa1", input="Which river runs through Tromsø?", output="none", task="Task2"),
    ]
    write_jsonl([*corpus, *pair], files / "corpus.jsonl")
    req = REQ | {"request_id": "REQ-HALF", "subject": subject}
    result = run_split(_cfg(files, requests=str(_requests(tmp_path, [*world.requests, req]))), _ctx(store, s3_prefix))
    assert result.warnings.get("document_partly_about_the_subject") == 1
    forget = {r.document_id for r in _read(result.sets["forget_train"].uri, tmp_path / "f")}
    forget |= {r.document_id for r in _read(result.sets["forget_eval"].uri, tmp_path / "e")}
    assert "halfdoc" in forget
    whole = run_split(_cfg(files), _ctx(store, s3_prefix))  # the demo's own people: every record names them
    assert "document_partly_about_the_subject" not in whole.warnings


def test_lume_style_mia_ids_name_their_documents(
    world: World, files: Path, store: ArtifactStore, s3_prefix: str, tmp_path: Path
) -> None:
    """LUME names an MIA document by a record id (<doc>sc1): read as its document, a trained one is caught."""
    members = load_records(str(files / "mia" / "member.jsonl"), MIADocument)
    write_jsonl([m.model_copy(update={"id": f"{m.id}sc1"}) for m in members], tmp_path / "members.jsonl")
    result = run_split(_cfg(files, mia_members=str(tmp_path / "members.jsonl")), _ctx(store, s3_prefix))
    assert "mia_member_rebuilt_from_records" not in result.warnings
    got = load_records(result.sets["mia_members"].uri, MIADocument, cache_root=tmp_path / "m")
    assert {d.id for d in got} == {m.id for m in members}
    trained = MIADocument(id=f"{world.retain[0].document_id}sc0", document="x")
    nonmembers = [*load_records(str(files / "mia" / "nonmember.jsonl"), MIADocument), trained]
    write_jsonl(nonmembers, tmp_path / "nm.jsonl")
    with pytest.raises(SplitError, match=f"MIA non-member {world.retain[0].document_id} is a trained document"):
        run_split(_cfg(files, mia_nonmembers=str(tmp_path / "nm.jsonl")), _ctx(store, s3_prefix))
