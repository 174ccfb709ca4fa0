"""Submit a run, or schedule recurring runs, on a Kubeflow Pipelines server (`amnesia submit|schedule`)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from amnesia.core.errors import AmnesiaError, ConfigError
from amnesia.runtime.pipeline_config import PipelineConfig
from pipelines.compile import compile_pipeline

_CRON_FIELD = re.compile(r"^[0-9*/,\-?A-Za-z]+$")
# KFP's scheduler (robfig/cron with seconds): each field's range, and the names it accepts.
_CRON_RANGES = (("seconds", 0, 59), ("minutes", 0, 59), ("hours", 0, 23), ("day of month", 1, 31),
                ("month", 1, 12), ("day of week", 0, 6))  # fmt: skip
_CRON_NAMES = {
    "month": {
        m: i + 1
        for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))
    },  # fmt: skip
    "day of week": {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))},
}
_CRON_ITEM = re.compile(r"^(?:(\*|\?)|(\w+)(?:-(\w+))?)(?:/(\d+))?$")


def _cron_value(token: str, field: str, lo: int, hi: int) -> int:
    value = _CRON_NAMES.get(field, {}).get(token.upper()) if not token.isdigit() else int(token)
    if value is None or not lo <= value <= hi:
        raise ValueError(f"{field} {token!r} is not in {lo}-{hi}")
    return value


def _check_cron_field(text: str, field: str, lo: int, hi: int) -> None:
    for item in text.split(","):
        m = _CRON_ITEM.match(item)
        if m is None:
            raise ValueError(f"{field} {item!r} is not a value, range, list or step")
        star, start, end, step = m.groups()
        if star == "?" and field not in ("day of month", "day of week"):
            raise ValueError(f"{field}: '?' is for day of month or day of week only")
        if start is not None:
            first = _cron_value(start, field, lo, hi)
            if end is not None and _cron_value(end, field, lo, hi) < first:
                raise ValueError(f"{field} {item!r}: the range runs backwards")
        if step is not None and int(step) == 0:
            raise ValueError(f"{field} {item!r}: a step of 0")


def check_cron(expr: str) -> str:
    """KFP's cron has six fields (seconds first): '0 0 3 * * *' is 03:00 every day. Each field is checked
    against its range, so '0 0 25 * * *' fails here, not on the server."""
    fields = expr.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(f"--cron {expr!r}: KFP wants 6 fields, seconds first (e.g. '0 0 3 * * *' for 03:00 daily)")
    try:
        for text, (field, lo, hi) in zip(fields, _CRON_RANGES, strict=True):
            _check_cron_field(text, field, lo, hi)
    except ValueError as err:
        raise ConfigError(f"--cron {expr!r}: {err}") from None
    return expr


class KFPError(AmnesiaError):
    """The Kubeflow Pipelines server could not be reached or refused the request."""


class Server(BaseModel):
    """Where and as whom to reach Kubeflow Pipelines."""

    host: str
    namespace: str | None = None  # multi-user Kubeflow: the profile namespace
    token: str | None = None  # a bearer token (multi-user Kubeflow; else kfp's own discovery)


def _client(server: Server) -> Any:
    """kfp.Client for the server; its first call (a health check) already needs it."""
    import warnings

    import kfp

    with warnings.catch_warnings():  # "This client only works with KFP v2.0.0-beta.2 and later": noise
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=server.host, namespace=server.namespace, existing_token=server.token)


def _failure(host: str, err: Exception) -> KFPError:
    """One line for what kfp raises (urllib3 connection errors, the API's own exceptions)."""
    text = str(err).strip()
    if "Caused by" in text:  # urllib3: the cause is the part a person needs, as "Error: message"
        text = text.split("Caused by", 1)[1].strip(" ()")
        if found := re.search(r"(\w+)\((['\"])(?:<[^>]*>:\s*)?(.*?)\2\)?$", text):
            text = f"{found.group(1)}: {found.group(3)}"
    reason = getattr(err, "reason", None)
    status = getattr(err, "status", None)
    detail = f"HTTP {status} {reason}" if status else (text.splitlines()[0] if text else type(err).__name__)
    return KFPError(f"KFP at {host}: {detail[:240]}")


def _kfp_call(server: Server, call: Any) -> Any:
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call(_client(server))
    except (HTTPError, ApiException, OSError) as err:
        raise _failure(server.host, err) from None


def submit(cfg: PipelineConfig, server: Server, run_id: str, store_root: str, request_digest: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg.cluster, Path(tmp) / "pipeline.yaml")
        return _kfp_call(
            server,
            lambda client: client.create_run_from_pipeline_package(
                str(package),
                arguments=cfg.arguments(run_id, store_root, request_digest),
                run_name=run_id,
                experiment_name=cfg.experiment,
                service_account="amnesia-runner",
            ),
        )


def schedule(cfg: PipelineConfig, server: Server, cron: str, store_root: str, job_name: str) -> Any:
    """A recurring run: at most one at a time, no catch-up of missed slots, no caching (the request queue
    changes between runs), each run's id taken from its KFP job."""
    check_cron(cron)

    def create(client: Any) -> Any:
        return client.create_recurring_run(
            experiment_id=client.create_experiment(cfg.experiment, namespace=server.namespace).experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=cfg.arguments("scheduled", store_root, ""),
            pipeline_package_path=str(package),
            enable_caching=False,
            service_account="amnesia-runner",
        )

    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg.cluster, Path(tmp) / "pipeline.yaml", run_id_from_job=True)
        return _kfp_call(server, create)
