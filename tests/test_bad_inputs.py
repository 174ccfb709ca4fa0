"""What a hostile tester fed the CLI, the stages and the store: each gets one line naming the file, field or
option and what to fix, no traceback, and nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amnesia.core.config import load_yaml
from amnesia.core.errors import ConfigError, StoreError
from amnesia.science.records import RecordError
from amnesia.storage.records import load_records
from amnesia.storage.requests import RequestError, load_requests
from amnesia.storage.sealing import DataKeyError, FileKeyStore
from amnesia.storage.uri import parse_uri

GOOD = {"id": "doc1qa0", "input": "Where was Ann born?", "output": "Oslo", "task": "Task2"}
LATIN1 = "Where was Zoë born?".encode("latin-1")  # é/ë in Latin-1: not UTF-8


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amnesia.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)  # fmt: skip


def test_a_forget_file_with_non_utf8_bytes_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "forget.jsonl"
    bad = json.dumps(GOOD | {"id": "doc2qa0"}).encode().replace(b"Ann", LATIN1[10:14])
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad + b"\n")
    with pytest.raises(RecordError) as info:
        load_records(str(path))
    assert str(info.value).startswith(f"{path}: line 2: not UTF-8 text") and "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".yaml"])
def test_a_requests_file_with_non_utf8_bytes_names_its_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"requests{suffix}"
    first = b'{"request_id": "r1", "subject": "Ann Lee", "received": "2026-01-02"}\n'
    path.write_bytes((first if suffix == ".jsonl" else b"- request_id: r1\n") + b"  " + LATIN1 + b"\n")
    with pytest.raises(RequestError) as info:
        load_requests(path)
    assert str(info.value) == f"{path}: line 2: not UTF-8 text (save it as UTF-8)"


def test_a_config_whose_top_level_is_a_list_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump([{"model": "m"}, {"split": {}}]))
    with pytest.raises(ConfigError, match=r"run\.yaml: the top level must be a mapping of sections .*not a list"):
        load_yaml(cfg)
    out = _cli("run", "--config", str(cfg))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "Error: " in out.stderr and "top level must be a mapping" in out.stderr
    out = _cli("compile", "--config", str(cfg), "-o", str(tmp_path / "p.yaml"))
    assert out.returncode == 1 and "Traceback" not in out.stderr and "top level must be a mapping" in out.stderr
    assert not (tmp_path / "p.yaml").exists()


def test_a_config_path_that_is_a_folder_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a folder, not a file"):
        load_yaml(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"model: m\nsplit:\n  forget: " + LATIN1 + b"\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line 3: not UTF-8 text"):
        load_yaml(cfg)


def test_a_key_store_path_that_is_a_folder_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(DataKeyError, match=r"keys: a folder, not a file \(set AMNESIA_KEYSTORE=file:/PATH/keys.json\)"):
        FileKeyStore(folder).create("run-x")
    assert sorted(tmp_path.rglob("*")) == before  # no lock file, no temporary file


def test_a_non_integer_bit_width_is_a_usage_error() -> None:
    out = _cli("attack", "m", "1", "--bits", "4,x")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "--bits" in out.stderr and "'4,x': comma-separated whole numbers" in out.stderr


def test_an_empty_path_part_after_the_bucket_is_refused() -> None:
    with pytest.raises(StoreError, match=r"'s3://amnesia//abs/key': an empty path part after the bucket"):
        parse_uri("s3://amnesia//abs/key")
    assert parse_uri("s3://amnesia/abs/key/").key == "abs/key"  # a folder's trailing slash is still fine


def test_an_item_number_above_9_is_refused_as_the_scorer_would_skip_it(tmp_path: Path) -> None:
    path = tmp_path / "forget.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD | {"id": "doc1qa12"}) + "\n")
    with pytest.raises(RecordError) as info:
        load_records(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: line 2: field 'id'") and "number above 9 would not be scored" in msg

