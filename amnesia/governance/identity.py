"""Who decides on a candidate, and whether they may: people are MLflow's basic-auth users.

A reviewer is never a name somebody typed. `login` proves one with a password MLflow accepts; `from_proxy`
takes one from a header an authenticating proxy (OIDC in front) set, once MLflow knows that user; the CLI
is whoever its MLflow credentials name. `authorize` then asks MLflow's own permission store for the
user's effective permission on the registered model (grants, roles and the server's default, resolved as
MLflow resolves them for a real request): deciding needs MANAGE, because a decision makes writes that
MLflow counts as a delete (alias `candidate` comes off the version), and the pipeline's runner is
refused whatever their permission. The web page and the CLI both go through `authorize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from amnesia.core.errors import AmnesiaError
from amnesia.core.settings import Settings

DECIDES = ("MANAGE",)  # tags and aliases set, alias `candidate` deleted: MLflow asks MANAGE for the delete
_TIMEOUT_S = 10.0


class AuthError(AmnesiaError):
    """Authentication or authorization refused; the message says who and why."""


def same_person(a: str, b: str) -> bool:
    """Identities compared as people write them: case and surrounding space do not make another person."""
    return a.strip().casefold() == b.strip().casefold()


@dataclass(frozen=True)
class User:
    username: str
    is_admin: bool


class MlflowAuth:
    """MLflow's auth API (the `basic-auth` app) with one user's credentials."""

    def __init__(self, tracking_uri: str, username: str, password: str) -> None:
        self.uri, self.username, self._password = tracking_uri.rstrip("/"), username, password

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowAuth:
        """This process's MLflow identity (MLFLOW_TRACKING_USERNAME / _PASSWORD)."""
        if not settings.mlflow_tracking_uri:
            raise AuthError("MLFLOW_TRACKING_URI is not set (start the local stack: `amnesia stack up`)")
        if not settings.mlflow_tracking_username or not settings.mlflow_tracking_password:
            raise AuthError(
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are not set: a decision is made by an "
                "authenticated MLflow user (`amnesia stack env --user NAME` for the local stack)"
            )
        return cls(settings.mlflow_tracking_uri, settings.mlflow_tracking_username,
                   settings.mlflow_tracking_password.get_secret_value())  # fmt: skip

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = requests.request(
                method, f"{self.uri}{path}", auth=(self.username, self._password), timeout=_TIMEOUT_S, **kwargs
            )
        except requests.RequestException as err:
            raise AuthError(f"MLflow at {self.uri} is unreachable ({err.__class__.__name__})") from None
        if resp.status_code == 401:
            raise AuthError(f"MLflow at {self.uri} refused the credentials of {self.username}")
        if resp.status_code == 403:
            raise AuthError(f"{self.username} may not {what} in MLflow at {self.uri}")
        if resp.status_code == 404 and "/users/" in path and "RESOURCE_DOES_NOT_EXIST" not in resp.text:
            raise AuthError(
                f"MLflow at {self.uri} has no authentication (run it with `--app-name basic-auth`): "
                "decisions need an authenticated reviewer"
            )
        if resp.status_code >= 400:
            raise AuthError(f"MLflow refused to {what} ({resp.status_code}): {resp.text[:200]}")
        return resp.json() if resp.content else {}

    def current_user(self) -> User:
        got = self._call("GET", "/api/2.0/mlflow/users/current", "read its own identity")["user"]
        return User(got["username"], bool(got.get("is_admin")))

    def user(self, username: str) -> User | None:
        """A user by name (admins only); None when MLflow has no such user."""
        try:
            got = self._call("GET", "/api/2.0/mlflow/users/get", "read users", params={"username": username})
        except AuthError as err:
            if "RESOURCE_DOES_NOT_EXIST" in str(err):
                return None
            raise
        return User(got["user"]["username"], bool(got["user"].get("is_admin")))

    def permission(self, username: str, model: str) -> str:
        """The user's effective permission on a registered model, resolved by MLflow as for a real request."""
        got = self._call(
            "GET",
            "/api/3.0/mlflow/users/permissions/get",
            f"read the permissions of {username}",
            params={"username": username, "resource_type": "registered_model", "resource_id": model},
        )
        return str(got.get("permission", "NO_PERMISSIONS"))

    def resources(self) -> tuple[list[str], list[str]]:
        """The registered models' names and the experiments' ids this user can see (the first 1000 of each)."""
        models = self._call("GET", "/api/2.0/mlflow/registered-models/search", "list models",
                            params={"max_results": 1000}).get("registered_models", [])  # fmt: skip
        experiments = self._call("POST", "/api/2.0/mlflow/experiments/search", "list experiments",
                                 json={"max_results": 1000}).get("experiments", [])  # fmt: skip
        return [m["name"] for m in models], [e["experiment_id"] for e in experiments]

    def create_user(self, username: str, password: str) -> None:
        self._call("POST", "/api/2.0/mlflow/users/create", "create users",
                   json={"username": username, "password": password})  # fmt: skip

    def grant(self, username: str, resource: str, permission: str, resource_type: str = "registered_model") -> None:
        """Set a user's permission on a registered model (it need not exist yet) or an experiment (by id); a grant
        already there is replaced (MLflow refuses a second one)."""
        body = {"username": username, "resource_type": resource_type, "resource_id": resource,
                "permission": permission}  # fmt: skip
        what = f"grant permissions on {resource}"
        try:
            self._call("POST", "/api/3.0/mlflow/users/permissions/grant", what, json=body)
        except AuthError as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err):
                raise
            revoke = {k: v for k, v in body.items() if k != "permission"}
            self._call("POST", "/api/3.0/mlflow/users/permissions/revoke", what, json=revoke)
            self._call("POST", "/api/3.0/mlflow/users/permissions/grant", what, json=body)


@dataclass(frozen=True)
class Reviewer:
    """An authenticated person. `checker` holds credentials that may read this person's permissions: their
    own (the CLI, a login) or the page's service account (behind a proxy)."""

    user: str
    via: str  # how the identity was established: "mlflow" or "proxy:<header>"
    checker: MlflowAuth = field(repr=False, compare=False)


def login(tracking_uri: str, username: str, password: str) -> Reviewer:
    """A reviewer whose password MLflow accepts; the name is the one MLflow knows, not the one typed."""
    auth = MlflowAuth(tracking_uri, username, password)
    return Reviewer(user=auth.current_user().username, via="mlflow", checker=auth)


def from_settings(settings: Settings) -> Reviewer:
    """The CLI's reviewer: the MLflow user this process's credentials authenticate as."""
    auth = MlflowAuth.from_settings(settings)
    return Reviewer(user=auth.current_user().username, via="mlflow", checker=auth)


def from_proxy(username: str, header: str, service: MlflowAuth) -> Reviewer:
    """A reviewer named by an authenticating proxy's header; MLflow must know them (permissions live there)."""
    if not username.strip():
        raise AuthError(f"the proxy sent no user in {header}")
    if service.user(username.strip()) is None:
        raise AuthError(f"{username.strip()} is not an MLflow user: grant them access in MLflow first")
    return Reviewer(user=username.strip(), via=f"proxy:{header}", checker=service)


def authorize(reviewer: Reviewer, name: str, version: str, runner: str) -> None:
    """Raise unless this person may decide on the version: not its runner, MANAGE on the model."""
    if runner and same_person(reviewer.user, runner):
        raise AuthError(
            f"{reviewer.user} ran the pipeline that made {name} version {version}; another person must decide"
        )
    permission = reviewer.checker.permission(reviewer.user, name)
    if permission not in DECIDES:
        raise AuthError(
            f"{reviewer.user} has {permission} on registered model {name}; deciding needs MANAGE "
            f"(an MLflow admin grants it: `amnesia stack user grant {reviewer.user} {name}` on the local stack)"
        )
