"""Environment settings: AMNESIA_* plus the standard AWS_* and MLFLOW_* variables.

One model, read once per process. A bad value fails at load with the variable named.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from amnesia.core.errors import ConfigError


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AMNESIA_", extra="ignore", populate_by_name=True)

    home: Path = Field(Path(".amnesia"), description="State folder of the local stack (pids, logs, db).")
    bucket: str = Field("amnesia", pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
    experiment: str = Field("selective-amnesia", min_length=1)

    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=_env("AMNESIA_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"),
        pattern=r"^https?://[^\s/]+(/.*)?$",
    )
    aws_access_key_id: str | None = Field(None, validation_alias=_env("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias=_env("AWS_SECRET_ACCESS_KEY"))
    aws_region: str = Field("us-east-1", validation_alias=_env("AWS_DEFAULT_REGION", "AWS_REGION"))
    mlflow_tracking_uri: str | None = Field(None, validation_alias=_env("MLFLOW_TRACKING_URI"))
    # The MLflow identity of this process (MLflow's basic-auth app): the runner's in a pipeline, the reviewer's
    # for `amnesia approve`, an admin's for `amnesia serve`. MLflow's client reads the same variables.
    mlflow_tracking_username: str | None = Field(None, validation_alias=_env("MLFLOW_TRACKING_USERNAME"))
    mlflow_tracking_password: SecretStr | None = Field(None, validation_alias=_env("MLFLOW_TRACKING_PASSWORD"))

    # S3 client behaviour: bounded retries (boto3 "standard" mode) and short timeouts.
    s3_max_attempts: int = Field(4, ge=1, le=20)
    s3_connect_timeout: float = Field(5.0, gt=0, le=300)
    s3_read_timeout: float = Field(60.0, gt=0, le=3600)
    s3_multipart_threshold_mb: int = Field(16, ge=5, le=5120)

    # Local stack ports (0 = pick a free port).
    s3_port: int = Field(9900, ge=0, le=65535)
    mlflow_port: int = Field(5500, ge=0, le=65535)
    review_port: int = Field(5600, ge=0, le=65535)

    # Read-only shared data (MMLU in the cais/mmlu layout), used by tests and the demo.
    shared_data: Path | None = Field(None, description="Folder holding mmlu/ (../shared/data here).")
    image: str = Field("ghcr.io/selective-amnesia/amnesia", description="Container image repository.")

    # Encryption at rest of personal data (amnesia.storage.sealing): on by default.
    encrypt: bool = Field(True, description="Seal the files the layout marks personal with the run's data key.")
    keystore: str | None = Field(None, description="file:/PATH or k8s:NAMESPACE/SECRET (default: a file in home).")

    # The reviewers' page (`amnesia serve`) and the notifications the register step sends.
    review_url: str | None = Field(None, description="The page's public address, for links in notifications.")
    review_webhooks: str = Field("", description="Comma-separated URLs told of each new candidate (JSON POST).")
    review_webhook_secret: SecretStr | None = Field(None, description="Signs notifications: HMAC-SHA256 header.")

    def webhook_urls(self) -> list[str]:
        return [u.strip() for u in self.review_webhooks.split(",") if u.strip()]

    def keystore_spec(self) -> str:
        return self.keystore or f"file:{(self.home / 'keys' / 'data-keys.json').resolve()}"


def _env_name(err: ValidationError) -> str:
    """The variable to fix: the one of a field's names that is set, else its first name."""
    loc = err.errors()[0]["loc"]
    key = str(loc[0]) if loc else "(root)"
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = list(alias.choices) if isinstance(alias, AliasChoices) else [f"AMNESIA_{field.upper()}"]
        if key == field or key in names:
            return next((n for n in names if n in os.environ), names[0])
    return key


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; overrides win. Raises ConfigError naming the field."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"settings: {_env_name(err)}: {first['msg']}") from None


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings (cached)."""
    return load_settings()
