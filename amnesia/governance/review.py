"""The reviewers' page (`amnesia serve`): pending candidates, their evidence, approve or reject as a signed-in person.

Reviewers are MLflow users (amnesia.governance.identity): they sign in with their MLflow password, or an authenticating
proxy names them in a trusted header. The approver recorded is always that identity, never a form field;
each decision goes through `registry.approve` / `registry.reject`, which authorize it exactly as for the
CLI. The page runs as an MLflow admin (it reads reviewers' permissions) and shows ids, digests and figures
only: no record text, no subject, no reviewer note. Forms carry a CSRF token (Flask-WTF) and the session
cookie is signed, HttpOnly and SameSite=Lax.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import quote

from amnesia.core.errors import AmnesiaError
from amnesia.core.settings import Settings
from amnesia.governance.identity import AuthError, MlflowAuth, Reviewer, from_proxy, login
from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag
from amnesia.storage.uri import join

TEMPLATES = Path(__file__).parent / "templates" / "review"
READABLE = ("READ", "USE", "EDIT", "MANAGE")
_CACHE_S = 30.0


@dataclass
class ReviewConfig:
    auth: str = "mlflow"  # "mlflow": sign in with an MLflow password; "proxy": a trusted header names the user
    proxy_header: str = "X-Forwarded-User"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    secure_cookies: bool = False  # set behind TLS: the session cookie is then sent over HTTPS only
    session_hours: float = 8.0
    poll_seconds: int = 5  # how often an open page asks for the pending list


class _Cache:
    """Small time-bounded memo (audits re-hash folders; permissions are an MLflow call each)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s, self._items, self._lock = ttl_s, {}, threading.Lock()  # type: dict

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit and now - hit[0] < self.ttl_s:
                return hit[1]
        value = make()
        with self._lock:
            self._items[key] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _due_rows(store: ArtifactStore, root: str, ids: list[str]) -> list[dict[str, Any]]:
    """Each request's id, state and due date (Art. 12(3)); the request's text stays in the store."""
    from amnesia.storage.requests import RequestQueue, due_date

    queue, now, rows = RequestQueue(store, root), datetime.now(UTC), []
    for rid in ids:
        found = queue.find(rid)
        if found is None:
            rows.append({"request_id": rid, "state": "unknown", "due": "", "days_left": None, "overdue": False})
            continue
        state, req = found
        due = due_date(req, queue.extension(rid))
        days = (due - now).days
        rows.append({"request_id": rid, "state": state, "due": due.date().isoformat(), "days_left": days,
                     "overdue": state == "pending" and now > due})  # fmt: skip
    return sorted(rows, key=lambda r: r["due"] or "~")


def _request_ids(store: ArtifactStore, split_uri: str) -> list[str]:
    """The ids of the requests a run worked on: its split report's (ids only), else its request snapshot's."""
    from amnesia.storage.requests import load_requests_uri
    from amnesia.storage.sealing import DataKeyError

    if not split_uri:
        return []
    report = join(split_uri, L.SPLIT_REPORT)
    if store.exists(report):
        return list(store.get_json(report).get("request_ids", []))
    try:
        return [r.request_id for r in load_requests_uri(store, join(split_uri, L.REQUESTS_SNAPSHOT))]
    except (AmnesiaError, DataKeyError):
        return []


def _root_of(tags: dict[str, str], default: str) -> str:
    """The store root a version's run lives under (its queue, its decision notes); else the page's own."""
    split = tags.get(Tag.SPLIT_URI, "")
    return L.store_root(split) if f"/{L.RUNS}/" in split else default


def _figure_rows(got: dict[str, float]) -> list[dict[str, Any]]:
    """Before → after for every figure the version's LoggedModel holds for both."""
    keys = sorted(k for k in got if not k.startswith("base.") and f"base.{k}" in got)
    return [
        {"name": k, "base": got[f"base.{k}"], "candidate": got[k], "delta": got[k] - got[f"base.{k}"]} for k in keys
    ]


def _attacks(store: ArtifactStore, tags: dict[str, str]) -> list[dict[str, Any]]:
    """The on-demand attack runs recorded on the version (`amnesia attack`): worst recoveries and checks."""
    from amnesia.governance.versions import ATTACK_PREFIX

    out = []
    for key in sorted(k for k in tags if k.startswith(ATTACK_PREFIX)):
        uri = tags[key].split("#", 1)[0]
        try:
            got = store.get_json(join(uri, L.RESULT))
        except AmnesiaError as err:
            out.append({"run": key.removeprefix(ATTACK_PREFIX), "error": str(err), "worst": {}, "checks": []})
            continue
        out.append({"run": key.removeprefix(ATTACK_PREFIX), "error": "", "worst": got.get("worst", {}),
                    "checks": got.get("checks", [])})  # fmt: skip
    return out


def _obligations(store: ArtifactStore, tags: dict[str, str]) -> dict[str, Any]:
    """The earlier requests this candidate was checked on: per request, its figures and the gate's result."""
    from amnesia.governance.obligations import plan_of
    from amnesia.governance.versions import CANDIDATE_EVALUATION
    from amnesia.results.evaluation import Evaluation

    plan = plan_of(store, tags)
    if plan is None:
        return {"rows": [], "note": "", "start": ""}
    candidate = None
    if ref := tags.get(CANDIDATE_EVALUATION, "").partition("#")[0]:
        with contextlib.suppress(AmnesiaError):
            candidate = Evaluation.load(store, ref)
    checks = {c["name"]: c for c in _verdict(store, tags).get("checks", [])}
    rows = []
    for o in plan.obligations:
        got = candidate.obligations.get(o.request_id) if candidate else None
        check = checks.get(f"obligation.{o.request_id}.forget_score")
        rows.append({"request_id": o.request_id, "fulfilled_by": o.fulfilled_by, "items": got.items if got else 0,
                     "knowledge": got.knowledge if got else None, "regurgitation": got.regurgitation if got else None,
                     "forget_score": got.forget_score if got else None,
                     "result": ("pass" if check["passed"] else "FAIL") if check else "not gated"})  # fmt: skip
    note = f"{len(plan.obligations)} of {len(plan.earlier)} checked ({plan.sampling})"
    if plan.not_checked:
        note += f"; not checked this run: {', '.join(plan.not_checked)}"
    if plan.ended:
        note += f"; ended, checks stopped: {', '.join(plan.ended)}"
    start = f"{plan.mode} from " + (f"v{plan.start_version} (champion)" if plan.start_version else "the original model")
    return {"rows": rows, "note": note, "start": start}


def _search(store: ArtifactStore, tags: dict[str, str]) -> dict[str, Any]:
    """The settings search that chose the candidate's settings (from its model folder's summary), as a table."""
    from amnesia.results.search import SearchResult

    uri = tags.get(Tag.MODEL_URI, "")
    summary = join(uri, L.UNLEARN_SUMMARY) if uri else ""
    found = None
    if summary:
        with contextlib.suppress(AmnesiaError):
            found = store.get_json(summary).get("search")
    if not found:
        return {"line": "", "note": "", "head": [], "rows": []}
    result = SearchResult.model_validate(found)
    head, rows = result.table()
    return {"line": result.line(), "note": result.note(), "head": head, "rows": rows}


def _verdict(store: ArtifactStore, tags: dict[str, str]) -> dict[str, Any]:
    report = tags.get(Tag.REPORT_URI)
    if not report or not store.exists(join(report, L.VERDICT)):
        return {"passed": None, "checks": []}
    got = store.get_json(join(report, L.VERDICT))
    return {"passed": got.get("passed"), "checks": got.get("checks", [])}


def _tenures(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Who held `champion` when: each approval holds it until the next one."""
    approved = [r for r in rows if r["status"] == "approved"]
    return [{"version": r["version"], "approver": r["reviewer"], "authenticated_by": r.get("authenticated_by", ""),
             "from": r["at"], "until": approved[i + 1]["at"] if i + 1 < len(approved) else "now"}
            for i, r in enumerate(approved)]  # fmt: skip


def create_app(settings: Settings, root: str, config: ReviewConfig | None = None) -> Any:
    """The Flask application. `settings` must carry an MLflow admin's credentials (it reads permissions)."""
    from flask import Flask, Response, abort, flash, g, jsonify, redirect, render_template, request, session, url_for
    from flask_wtf.csrf import CSRFError, CSRFProtect

    from amnesia.governance import registry, versions
    from amnesia.governance.audit import audit

    cfg = config or ReviewConfig()
    if cfg.auth not in ("mlflow", "proxy"):
        raise AuthError(f"review auth: {cfg.auth!r} is not one of mlflow, proxy")
    service = MlflowAuth.from_settings(settings)
    if not service.current_user().is_admin:
        raise AuthError(f"the page's MLflow user {service.username} must be an MLflow admin: it reads reviewers' "
                        "permissions")  # fmt: skip
    store = ArtifactStore(settings)
    proxies = [ipaddress.ip_network(p) for p in cfg.trusted_proxies]
    audits, permissions, known = _Cache(_CACHE_S), _Cache(_CACHE_S), _Cache(_CACHE_S)
    dues = _Cache(2 * _CACHE_S)  # due dates move by days, the list asks every few seconds

    app = Flask(__name__, template_folder=str(TEMPLATES))
    app.config.update(
        SECRET_KEY=cfg.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg.secure_cookies,
        SESSION_COOKIE_NAME="amnesia_review",
        PERMANENT_SESSION_LIFETIME=int(cfg.session_hours * 3600),
        WTF_CSRF_TIME_LIMIT=int(cfg.session_hours * 3600),
    )
    CSRFProtect(app)

    def reviewer() -> Reviewer | None:
        if cfg.auth == "proxy":
            addr = ipaddress.ip_address(request.remote_addr or "0.0.0.0")
            if not any(addr in net for net in proxies):
                abort(403, f"requests must come through the authenticating proxy ({', '.join(cfg.trusted_proxies)})")
            name = request.headers.get(cfg.proxy_header, "").strip()
            if not name:
                abort(401, f"the proxy sent no {cfg.proxy_header} header")
            return known.get(("proxy", name.casefold()), lambda: from_proxy(name, cfg.proxy_header, service))
        user = session.get("user")
        return Reviewer(user=user, via="mlflow", checker=service) if user else None

    def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                who = reviewer()
            except AuthError as err:
                abort(403, str(err))
            if who is None:
                return redirect(url_for("sign_in", next=request.path))
            g.reviewer = who
            return view(*args, **kwargs)

        return wrapper

    def permission(model: str) -> str:
        who: Reviewer = g.reviewer
        return permissions.get((who.user, model), lambda: service.permission(who.user, model))

    def readable(model: str) -> None:
        if permission(model) not in READABLE:
            abort(403, f"{g.reviewer.user} has no permission on registered model {model}")

    def queue_rows() -> list[dict[str, Any]]:
        rows = [r for r in registry.pending(settings) if permission(r["name"]) in READABLE]
        for r in rows:
            r["url"] = url_for("candidate", name=r["name"], version=r["version"])
            due = dues.get(
                (r["name"], r["version"]),
                lambda r=r: _due_rows(
                    store, _root_of({Tag.SPLIT_URI: r["split_uri"]}, root), _request_ids(store, r["split_uri"])
                ),
            )
            dated = [d for d in due if d["due"]]
            r["requests"] = len(due)
            r["soonest_due"] = dated[0]["due"] if dated else ""
            r["overdue"] = sum(d["overdue"] for d in due)
            del r["split_uri"]
        return rows

    @app.errorhandler(CSRFError)
    def bad_csrf(err: CSRFError) -> Any:
        return render_template("error.html", code=400, message=f"refused: {err.description}"), 400

    @app.errorhandler(400)
    @app.errorhandler(401)
    @app.errorhandler(403)
    @app.errorhandler(404)
    def refused(err: Any) -> Any:
        return render_template("error.html", code=err.code, message=err.description), err.code

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'self'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        return resp

    @app.get("/health")
    def health() -> Any:
        return {"ok": True}

    @app.route("/login", methods=["GET", "POST"])
    def sign_in() -> Any:
        if cfg.auth == "proxy":
            return redirect(url_for("index"))
        error = ""
        if request.method == "POST":
            try:
                who = login(service.uri, request.form.get("username", ""), request.form.get("password", ""))
            except AuthError:
                error = "MLflow did not accept that user name and password"
            else:
                session.clear()
                session.permanent = True
                session["user"] = who.user  # the name MLflow knows, not the one typed
                target = request.args.get("next", "")
                local = target.startswith("/") and not target.startswith(("//", "/\\"))  # never off-site
                return redirect(target if local else "/")
        return render_template("login.html", error=error), 401 if error else 200

    @app.post("/logout")
    def sign_out() -> Any:
        session.clear()
        return redirect(url_for("sign_in"))

    @app.get("/")
    @signed_in
    def index() -> Any:
        return render_template("index.html", rows=queue_rows(), poll=cfg.poll_seconds, auth=cfg.auth)

    @app.get("/api/pending")
    @signed_in
    def api_pending() -> Any:
        return jsonify({"pending": queue_rows(), "checked_at": datetime.now(UTC).strftime("%H:%M:%S UTC")})

    def version_or_404(name: str, version: str) -> Any:
        try:
            return versions.get_version(versions.registry_client(settings), name, version)
        except registry.RegistryError as err:
            abort(404, str(err))

    @app.get("/models/<name>/versions/<version>")
    @signed_in
    def candidate(name: str, version: str, error: str = "", status: int = 200) -> Any:
        readable(name)
        mv = version_or_404(name, version)
        tags = mv.tags or {}
        key = (name, version, mv.last_updated_timestamp)
        chain = audits.get(key, lambda: audit(settings, store, name, version))
        ids = next((link.detail.get("request_ids", []) for link in chain.links if link.step == "requests"), [])
        report = join(tags.get(Tag.SPLIT_URI, ""), L.SPLIT_REPORT)
        if not ids and tags.get(Tag.SPLIT_URI) and store.exists(report):  # sealed and no key here: the ids only
            ids = store.get_json(report).get("request_ids", [])
        runner = tags.get(registry.RUNNER, "")
        may, why = True, ""
        if tags.get(Tag.STATUS) == registry.PENDING:
            try:
                from amnesia.governance.identity import authorize

                authorize(g.reviewer, name, version, runner)
            except AuthError as err:
                may, why = False, str(err)
        page = {
            "name": name,
            "version": version,
            "status": tags.get(Tag.STATUS, ""),
            "runner": runner,
            "pipeline_run_id": tags.get(Tag.PIPELINE_RUN_ID, ""),
            "method": tags.get(Tag.METHOD, ""),
            "layers": tags.get(Tag.LAYERS, ""),
            "reasons": tags.get(Tag.GATE_REASONS, ""),
            "approver": tags.get(registry.APPROVER, ""),
            "decided_at": tags.get(registry.DECIDED_AT, ""),
            "figures": _figure_rows(registry.figures(versions.registry_client(settings), mv)),
            "verdict": _verdict(store, tags),
            "chain": chain,
            "requests": _due_rows(store, _root_of(tags, root), ids),
            "attacks": _attacks(store, tags),
            "obligations": _obligations(store, tags),
            "search": _search(store, tags),
            "has_report": bool(tags.get(Tag.REPORT_URI)) and store.exists(join(tags[Tag.REPORT_URI], L.REPORT_HTML)),
            "may_decide": may,
            "why_not": why,
        }
        return render_template("candidate.html", v=page, error=error), status

    @app.get("/models/<name>/versions/<version>/report")
    @signed_in
    def report(name: str, version: str) -> Any:
        """The gate's stored report (redacted: ids and figures), sandboxed: it runs no script here."""
        readable(name)
        uri = (version_or_404(name, version).tags or {}).get(Tag.REPORT_URI)
        if not uri or not store.exists(join(uri, L.REPORT_HTML)):
            abort(404, f"{name} v{version} has no stored report")
        resp = Response(store.get_bytes(join(uri, L.REPORT_HTML)), mimetype="text/html")
        resp.headers["Content-Security-Policy"] = (
            "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        )
        return resp

    @app.post("/models/<name>/versions/<version>/decision")
    @signed_in
    def decide(name: str, version: str) -> Any:
        readable(name)
        what, note = request.form.get("decision", ""), request.form.get("note", "")
        if what not in ("approve", "reject"):
            abort(400, "decision must be approve or reject")
        act = registry.approve if what == "approve" else registry.reject
        where = _root_of(version_or_404(name, version).tags or {}, root)
        try:  # the reviewer is the session's (or the proxy's) identity; no form field names a person
            act(settings, store, where, name, version, g.reviewer, note)
        except AuthError as err:
            return candidate.__wrapped__(name, version, error=str(err), status=403)  # type: ignore[attr-defined]
        except AmnesiaError as err:
            return candidate.__wrapped__(name, version, error=str(err), status=409)  # type: ignore[attr-defined]
        audits.clear()
        flash(f"{name} v{version} {'approved' if what == 'approve' else 'rejected'} by {g.reviewer.user}")
        return redirect(url_for("history", name=name))

    @app.get("/models/<name>/history")
    @signed_in
    def history(name: str) -> Any:
        readable(name)
        try:
            rows = registry.history(settings, name)
        except registry.RegistryError as err:
            abort(404, str(err))
        champion = versions.alias_of(versions.registry_client(settings), name, registry.CHAMPION)
        return render_template("history.html", name=name, rows=rows, tenures=_tenures(rows), champion=champion)

    @app.get("/static/<asset>")
    def static_asset(asset: str) -> Any:
        kinds = {"review.js": "text/javascript", "review.css": "text/css"}
        if asset not in kinds:
            abort(404, f"no asset {asset}")
        return Response((TEMPLATES / asset).read_text(), mimetype=kinds[asset])

    @app.context_processor
    def common() -> dict[str, Any]:
        who = getattr(g, "reviewer", None)
        return {"who": who, "quote": lambda s: quote(str(s), safe="")}

    return app


def serve(settings: Settings, root: str, host: str, port: int, config: ReviewConfig | None = None) -> None:
    """Run the page with a threaded WSGI server (one process; a cluster runs gunicorn on `create_app`)."""
    from werkzeug.serving import make_server

    server = make_server(host, port, create_app(settings, root, config), threaded=True)
    server.serve_forever()
