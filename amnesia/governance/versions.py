"""The registered model's versions as MLflow holds them: aliases, statuses and tag names (one place: the
registry writes them, the audit, purge, evidence and the review page read them), and reading a version."""

from __future__ import annotations

from typing import Any

from amnesia.core.errors import AmnesiaError
from amnesia.core.settings import Settings
from amnesia.storage.lineage import Tag, mlflow_client

CANDIDATE, CHAMPION = "candidate", "champion"


PENDING, APPROVED, REJECTED = "pending_approval", "approved", "rejected"


# Registry tags beyond the lineage ones.
RUNNER = "amnesia.runner"  # the identity that ran the pipeline (may not approve)


APPROVER = "amnesia.approver"  # the authenticated MLflow user who decided


APPROVER_AUTH = "amnesia.approver_auth"  # how they were authenticated: mlflow, proxy:<header>


DECIDED_AT = "amnesia.decided_at"


NOTE_URI = "amnesia.note_uri"


NOTE_SHA256 = "amnesia.note_sha256"


PREVIOUS_CHAMPION = "amnesia.previous_champion"


LOGGED_MODEL = "amnesia.logged_model"  # the MLflow 3 LoggedModel holding the version's figures and settings


REPORT_DIGEST = "amnesia.report_digest"


BASE_EVALUATION = "amnesia.base_evaluation"  # uri#digest of the stored per-item results


CANDIDATE_EVALUATION = "amnesia.candidate_evaluation"


ATTACK_PREFIX = "amnesia.attack."  # + time: uri#digest of an on-demand attack run (`amnesia attack`)


ROLLBACK_PREFIX = "amnesia.rollback."  # + time: on the version champion moved back to (from, by, record)


PURGE_PREFIX = "amnesia.purge."  # + purge id: uri#digest of a purge record (`amnesia purge`)


NOTIFIED = "amnesia.notified"  # webhooks told of the new candidate: "<ok>/<configured>"


class RegistryError(AmnesiaError):
    """A registration or a decision is refused; the message says why."""


def registry_client(settings: Settings) -> Any:
    if not settings.mlflow_tracking_uri:
        raise RegistryError("MLFLOW_TRACKING_URI is not set (start the local stack: `amnesia stack up`)")
    return mlflow_client(settings)


def find_version(
    client: Any, name: str, request_digest: str, base_digest: str, start_digest: str | None = None
) -> Any | None:
    """The version already made for these requests on this base model, from the same start model (MLflow
    has no idempotency key)."""
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = mv.tags or {}
        start = tags.get(Tag.START_MODEL_DIGEST, tags.get(Tag.BASE_MODEL_DIGEST))  # no start tag: the original
        same_start = start_digest is None or start == start_digest
        same = tags.get(Tag.REQUEST_DIGEST) == request_digest and tags.get(Tag.BASE_MODEL_DIGEST) == base_digest
        if same and same_start:
            return mv
    return None


def figures(client: Any, mv: Any) -> dict[str, float]:
    """A version's figures: its LoggedModel's metrics."""
    model_id = (mv.tags or {}).get(LOGGED_MODEL)
    if not model_id:
        return {}
    return {m.key: float(m.value) for m in client.get_logged_model(model_id).metrics or []}


def get_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"{name} version {version}: no such model version") from None


def alias_of(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points at, or None (aliases live on the registered model)."""
    return client.get_registered_model(name).aliases.get(alias)


def champion_of(client: Any, name: str) -> str | None:
    """The champion version, or None when nothing is approved (or the model is not registered yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return alias_of(client, name, CHAMPION)
    except MlflowException:
        return None


def check_known(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model named {name!r} in {client.tracking_uri}") from None
