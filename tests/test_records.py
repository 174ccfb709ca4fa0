"""Record schemas and loaders: every format from a path and from S3, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from amnesia.science.records import MIADocument, MMLUQuestion, RecordError, UnlearningRecord, write_jsonl, write_parquet
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.records import load_mmlu, load_records
from amnesia.storage.uri import join

RECORDS = [
    UnlearningRecord(
        id="6adbf83c-5071-4979-bedb-e5184b15650bsc1",
        input="Ada was born",
        output="in Porto.",
        task="Task2",
        split="forget",
    ),
    UnlearningRecord(
        id="6adbf83c-5071-4979-bedb-e5184b15650bqa0",
        input="Where was Ada born?",
        output="Porto",
        task="Task2",
        split="forget",
    ),
    UnlearningRecord(id="doc-7qa9", input="Q?", output="A", task="Task1"),
]
MIA = [MIADocument(id="d1", document="A whole biography."), MIADocument(id="d2", document="Another one.")]
MMLU = [
    MMLUQuestion(question="2+2?", subject="math", choices=["3", "4", "5", "6"], answer=1),
    MMLUQuestion(question="Red planet?", subject="astro", choices=["Mars", "Venus", "Io", "Sol"], answer=0),
]


def test_id_suffix_names_kind_document_and_index() -> None:
    sc, qa, other = RECORDS
    assert (sc.kind, sc.index, sc.document_id) == ("sc", 1, "6adbf83c-5071-4979-bedb-e5184b15650b")
    assert (qa.kind, qa.index) == ("qa", 0) and qa.document_id == sc.document_id
    assert (other.kind, other.index, other.document_id) == ("qa", 9, "doc-7")


def _write(fmt: str, rows: list, schema: type, folder: Path) -> Path:  # type: ignore[type-arg]
    if fmt == "jsonl":
        return write_jsonl(rows, folder / "data.jsonl")
    if fmt == "parquet":
        return write_parquet(rows, folder / "data.parquet", schema)
    path = folder / "saved"
    datasets.Dataset.from_list([r.model_dump() for r in rows]).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "saved"])
@pytest.mark.parametrize(("schema", "rows"), [(UnlearningRecord, RECORDS), (MIADocument, MIA), (MMLUQuestion, MMLU)])
def test_round_trip_from_path_and_s3(
    fmt: str,
    schema: type,
    rows: list,
    tmp_path: Path,  # type: ignore[type-arg]
    store: ArtifactStore,
    s3_prefix: str,
) -> None:
    path = _write(fmt, rows, schema, tmp_path)
    assert load_records(str(path), schema) == rows
    if path.is_dir():
        store.put_dir(path, join(s3_prefix, "saved"))
        uri = join(s3_prefix, "saved")
    else:
        uri = store.put_file(path, join(s3_prefix, path.name)).uri
    assert load_records(uri, schema, cache_root=tmp_path / "cache") == rows


def test_dataset_dict_needs_a_split(tmp_path: Path) -> None:
    dd = datasets.DatasetDict(
        {
            "forget": datasets.Dataset.from_list([RECORDS[0].model_dump()]),
            "retain": datasets.Dataset.from_list([RECORDS[2].model_dump()]),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_records(str(tmp_path / "dd"), split="retain") == [RECORDS[2]]
    with pytest.raises(RecordError, match=r"splits \['forget', 'retain'\]; name one"):
        load_records(str(tmp_path / "dd"))


def test_large_jsonl_streams(tmp_path: Path) -> None:
    from amnesia.storage.records import iter_records

    path = tmp_path / "big.jsonl"
    with open(path, "w") as fh:
        for i in range(50_000):
            fh.write(json.dumps({"id": f"d{i}qa0", "input": "q", "output": "a", "task": "Task2"}) + "\n")
        fh.write("{broken\n")
    it = iter_records(str(path))
    assert next(it).id == "d0qa0"  # rows arrive before the file is read to its (broken) end
    with pytest.raises(RecordError, match="line 50001: not valid JSON"):
        list(it)


GOOD = {"id": "abcqa0", "input": "q", "output": "a", "task": "Task2"}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([json.dumps(GOOD), "{not json"], "bad.jsonl: line 2: not valid JSON"),
        (
            [json.dumps(GOOD), json.dumps({k: v for k, v in GOOD.items() if k != "output"})],
            "bad.jsonl: line 2: field 'output': missing",
        ),
        ([json.dumps(GOOD | {"task": 5})], "bad.jsonl: line 1: field 'task': Input should be a valid string"),
        (
            [json.dumps(GOOD | {"id": "abc-7"})],
            "bad.jsonl: line 1: field 'id': Value error, id 'abc-7' must end in "
            "sc<n> (sentence completion) or qa<n> (question)",
        ),
        ([json.dumps(GOOD), "", "[1, 2]"], "bad.jsonl: line 3: expected a JSON object, got list"),
        (["", "  "], "bad.jsonl: empty (no records)"),
    ],
)
def test_malformed_jsonl_gives_one_line_naming_file_line_field(tmp_path: Path, lines: list[str], expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as info:
        load_records(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: {expected.split(': ', 1)[1]}") and "\n" not in msg


def test_error_messages_never_quote_record_text(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD | {"input": 123456789, "output": "Jane's SSN 900-12-3456"}) + "\n")
    with pytest.raises(RecordError) as info:
        load_records(str(path))
    assert "123456789" not in str(info.value) and "900-12-3456" not in str(info.value)


def test_malformed_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["aqa0"], "input": ["q"], "task": ["T"]}), tmp_path / "nocol.parquet")
    with pytest.raises(RecordError, match=r"nocol\.parquet: missing column 'output'"):
        load_records(str(tmp_path / "nocol.parquet"))
    pq.write_table(
        pa.table({"id": ["aqa0", "bqa1"], "input": ["q", "q"], "output": ["a", None], "task": ["T", "T"]}),
        tmp_path / "null.parquet",
    )
    with pytest.raises(RecordError, match=r"null\.parquet: row 2: field 'output': Input should be a valid string"):
        load_records(str(tmp_path / "null.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(RecordError, match=r"junk\.parquet: not a readable Parquet file"):
        load_records(str(tmp_path / "junk.parquet"))
    write_parquet([], tmp_path / "empty.parquet", UnlearningRecord)
    with pytest.raises(RecordError, match=r"empty\.parquet: empty \(no records\)"):
        load_records(str(tmp_path / "empty.parquet"))


def test_missing_and_unsupported_sources(tmp_path: Path, store: ArtifactStore, s3_prefix: str) -> None:
    with pytest.raises(RecordError, match="no such file or folder"):
        load_records(str(tmp_path / "absent.jsonl"))
    (tmp_path / "data.csv").write_text("id,input\n")
    with pytest.raises(RecordError, match=r"data\.csv: unsupported format '\.csv'"):
        load_records(str(tmp_path / "data.csv"))
    with pytest.raises(RecordError, match="no such object or folder"):
        load_records(join(s3_prefix, "nothing.jsonl"))


def test_hub_id_offline_is_a_clear_error() -> None:
    code = (
        "from amnesia.storage.records import load_records\n"
        "try:\n    load_records('someorg/some-dataset')\nexcept Exception as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip().startswith("someorg/some-dataset: not a local path, and loading it from the hub failed")


# ---------------------------------------------------------------- MMLU


def test_mmlu_reads_the_shared_data(shared_data: Path) -> None:
    test = load_mmlu(str(shared_data / "mmlu"), "test")
    dev = load_mmlu(str(shared_data / "mmlu"), "dev")
    assert len(test) == 13_757 and len(dev) == 285
    assert len({q.subject for q in test}) == 57
    assert all(len([q for q in dev if q.subject == s]) == 5 for s in {q.subject for q in dev})
    algebra = load_mmlu(str(shared_data / "mmlu"), "test", subjects=["abstract_algebra"])
    assert algebra and {q.subject for q in algebra} == {"abstract_algebra"}


@pytest.mark.parametrize("layout", ["all", "per_subject", "flat_parquet"])
def test_mmlu_reads_cais_parquet_layouts(tmp_path: Path, layout: str, store: ArtifactStore, s3_prefix: str) -> None:
    root = tmp_path / "mmlu"
    if layout == "all":
        write_parquet(MMLU, root / "all" / "test-00000-of-00001.parquet", MMLUQuestion)
    elif layout == "per_subject":
        for q in MMLU:
            write_parquet([q], root / q.subject / "test-00000-of-00001.parquet", MMLUQuestion)
    else:
        write_parquet(MMLU, root / "test.parquet", MMLUQuestion)
    assert sorted(load_mmlu(str(root)), key=lambda q: q.question) == sorted(MMLU, key=lambda q: q.question)
    store.put_dir(root, join(s3_prefix, "mmlu"))
    got = load_mmlu(join(s3_prefix, "mmlu"), cache_root=tmp_path / "cache")
    assert sorted(got, key=lambda q: q.question) == sorted(MMLU, key=lambda q: q.question)


def test_mmlu_errors(tmp_path: Path) -> None:
    write_jsonl(MMLU, tmp_path / "test.jsonl")
    with pytest.raises(RecordError, match="no MMLU 'validation' split found"):
        load_mmlu(str(tmp_path), "validation")
    with pytest.raises(RecordError, match="no MMLU questions for split 'test' and subjects"):
        load_mmlu(str(tmp_path), subjects=["law"])
    (tmp_path / "test.jsonl").write_text(
        json.dumps({"question": "q", "subject": "s", "choices": ["a", "b"], "answer": 0}) + "\n"
    )
    with pytest.raises(RecordError, match=r"test\.jsonl: line 1: field 'choices': List should have at least 4"):
        load_mmlu(str(tmp_path))
