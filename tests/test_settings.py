"""Settings and run config: bad values are refused at load with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from amnesia.core.config import RunConfig, config_hash, load_run_config
from amnesia.core.errors import ConfigError
from amnesia.core.settings import load_settings


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("AMNESIA_S3_MAX_ATTEMPTS", "zero", "AMNESIA_S3_MAX_ATTEMPTS"),
        ("AMNESIA_S3_MAX_ATTEMPTS", "0", "AMNESIA_S3_MAX_ATTEMPTS"),
        ("AMNESIA_BUCKET", "Not_A_Bucket", "AMNESIA_BUCKET"),
        ("AMNESIA_MLFLOW_PORT", "70000", "AMNESIA_MLFLOW_PORT"),
        ("MLFLOW_S3_ENDPOINT_URL", "localhost:9000", "MLFLOW_S3_ENDPOINT_URL"),
        ("AWS_ENDPOINT_URL_S3", "ftp://x", "AWS_ENDPOINT_URL_S3"),
    ],
)
def test_bad_setting_is_refused_with_its_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str
) -> None:
    for other in ("AMNESIA_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(f"settings: {named}: ")
    assert "\n" not in str(info.value)


def test_standard_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("AMNESIA_S3_ENDPOINT_URL", "http://127.0.0.1:2")
    s = load_settings()
    assert s.mlflow_tracking_uri == "http://127.0.0.1:1" and s.aws_access_key_id == "AKIAEXAMPLE"
    assert s.s3_endpoint_url == "http://127.0.0.1:2"
    assert "s3cret" not in repr(s), "secrets must not appear in reprs (logs)"


def test_run_config_loads_and_hashes(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: nightly\nseed: 3\nstore:\n  root: s3://amnesia/prod\n")
    cfg = load_run_config(path)
    assert cfg == RunConfig(name="nightly", seed=3, store={"root": "s3://amnesia/prod"})
    assert config_hash(cfg) == config_hash(load_run_config(path))
    assert config_hash(cfg) != config_hash(cfg.model_copy(update={"seed": 4}))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("seed: -1\n", "seed"),
        ("store:\n  root: 5\n  extra: 1\n", "store."),
        ("nmae: typo\n", "nmae: Extra inputs are not permitted"),
        ("name: 'has spaces'\n", "name"),
    ],
)
def test_bad_run_config_names_file_and_field(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert str(info.value).startswith(f"{path}: ") and named in str(info.value)


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: line \d+: not valid YAML"):
        load_run_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "absent.yaml")
