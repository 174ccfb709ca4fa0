"""The reviewers' page against the session stack's real services: MLflow's basic-auth users, the page the
stack started (`amnesia serve`), and headless Chromium driven by Selenium through Debian's chromedriver."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from PIL import Image
from pydantic import SecretStr

from amnesia.core.settings import Settings
from amnesia.devstack.stack import MLFLOW_ADMIN, MLFLOW_RUNNER
from amnesia.governance.identity import AuthError, MlflowAuth, login, same_person
from amnesia.governance.registry import register
from amnesia.governance.review import ReviewConfig, create_app
from amnesia.governance.versions import CHAMPION
from amnesia.stages.gate.stage import GateConfig, run_gate
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Tag
from amnesia.storage.requests import RequestQueue
from amnesia.storage.uri import join
from tests.chains import People, _chain, _requests
from tests.test_gate import BASE, _chromium, _ev


def _gate_files(tmp: Path) -> dict[str, bytes]:
    """A real gate's report and verdict (checks, figures, the trade-off plot), as the pipeline stores them."""
    ctx = RunContext("review-gate", str(tmp / "runs" / "review-gate"), ArtifactStore())
    result = run_gate(GateConfig(), ctx, BASE, _ev("candidate", (0.05, 0.3), (0.95, 0.9), 0.55, 0.7))
    folder = Path(result.report_uri)
    return {name: (folder / name).read_bytes() for name in ("verdict.json", "report.html")}


def _candidate(settings: Settings, store: ArtifactStore, prefix: str, name: str, tag: str, gate: dict) -> tuple:
    reqs = _requests(2, tag)
    RequestQueue(store, prefix).submit(reqs)
    model, tags = _chain(store, join(prefix, "runs", tag), reqs, gate_files=gate)
    figures = {"forget_score": 0.81, "base.forget_score": 0.02, "mmlu": 0.49, "base.mmlu": 0.5}
    return register(settings, name, model, tags | {Tag.PIPELINE_RUN_ID: f"run-{tag}"}, figures, True).version, reqs


def _form(session: requests.Session, url: str) -> str:
    page = session.get(url)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def _signed_in(base: str, user: str, password: str) -> requests.Session:
    s = requests.Session()
    resp = s.post(f"{base}/login", data={"csrf_token": _form(s, f"{base}/login"), "username": user,
                                         "password": password})  # fmt: skip
    assert resp.ok and f"Signed in as <b>{user}</b>" in resp.text, resp.text[:300]
    return s


def test_identity_is_what_mlflow_authenticates(stack_state, people: People) -> None:  # type: ignore[no-untyped-def]
    uri = stack_state.tracking_uri
    with pytest.raises(AuthError, match="refused the credentials of alice"):
        login(uri, "alice", "not-her-password")
    assert login(uri, MLFLOW_RUNNER, stack_state.password(MLFLOW_RUNNER)).user == MLFLOW_RUNNER
    assert same_person(" Alice ", "alice") and not same_person("alice", "alicia")
    admin, model = stack_state.mlflow_auth(), f"grants-{uuid.uuid4().hex[:6]}"
    people("gina")
    for level in ("READ", "MANAGE", "MANAGE", "DENY"):  # a second grant replaces the first
        admin.grant("gina", model, level)
        assert admin.permission("gina", model) == level
    runner = MlflowAuth(uri, MLFLOW_RUNNER, stack_state.password(MLFLOW_RUNNER))
    with pytest.raises(AuthError, match="amnesia-runner may not read the permissions of amnesia-admin"):
        runner.permission(MLFLOW_ADMIN, "any-model")  # only oneself, or an admin


def test_page_refuses_the_runner_the_unpermitted_forgeries_and_missing_csrf(
    stack_state,
    stack_settings: Settings,
    store: ArtifactStore,
    s3_prefix: str,
    people: People,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    name, base = f"review-http-{uuid.uuid4().hex[:6]}", stack_state.review_url
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    version, _ = _candidate(stack_settings, store, s3_prefix, name, "h", _gate_files(tmp_path))
    page = f"{base}/models/{name}/versions/{version}"
    assert requests.get(page, allow_redirects=False).headers["Location"].startswith("/login")  # not signed in

    anon = requests.Session()
    assert anon.post(f"{base}/login", data={"username": "x", "password": "y"}).status_code == 400  # no CSRF token
    bad = anon.post(f"{base}/login", data={"csrf_token": _form(anon, f"{base}/login"), "username": MLFLOW_RUNNER,
                                           "password": "guess"})  # fmt: skip
    assert bad.status_code == 401 and "did not accept" in bad.text

    people("alice", name)
    runner = _signed_in(base, MLFLOW_RUNNER, stack_state.password(MLFLOW_RUNNER))
    assert "amnesia-runner ran the pipeline that made" in runner.get(page).text  # said before anyone posts
    forged = {"csrf_token": _form(runner, page), "decision": "approve", "note": "mine", "reviewer": "alice",
              "approver": "alice", "user": "alice"}  # fmt: skip
    refused = runner.post(f"{page}/decision", data=forged)
    assert refused.status_code == 403 and "amnesia-runner ran the pipeline" in refused.text
    people("dave")
    off = requests.Session()  # a sign-in link that would send the reviewer elsewhere afterwards goes home
    login = {"username": "dave", "password": stack_state.password("dave")}
    for target in ("//evil.example/x", "/\\evil.example/x", "https://evil.example/"):
        login["csrf_token"] = _form(off, f"{base}/login")  # a sign-in starts a new session, and a new token
        got = off.post(f"{base}/login", params={"next": target}, data=login, allow_redirects=False)
        assert got.status_code == 302 and got.headers["Location"] == "/", (target, got.headers.get("Location"))
    dave = _signed_in(base, "dave", stack_state.password("dave"))
    refused = dave.post(f"{page}/decision", data={"csrf_token": _form(dave, page), "decision": "approve", "note": "x"})
    assert refused.status_code == 403 and f"dave has READ on registered model {name}" in refused.text
    people("eve", name, "DENY")
    eve = _signed_in(base, "eve", stack_state.password("eve"))
    assert eve.get(page).status_code == 403 and name not in eve.get(base + "/").text  # not even listed

    alice = _signed_in(base, "alice", stack_state.password("alice"))
    no_token = alice.post(f"{page}/decision", data={"decision": "approve", "note": "read it", "reviewer": "mallory"})
    assert no_token.status_code == 400 and "CSRF" in no_token.text
    assert client.get_model_version(name, version).tags[Tag.STATUS] == "pending_approval"  # nothing happened
    done = alice.post(f"{page}/decision", data={"csrf_token": _form(alice, page), "decision": "reject",
                                                "note": "retain too low", "reviewer": "mallory"})  # fmt: skip
    assert done.ok and f"{name} v{version} rejected by alice" in done.text
    tags = client.get_model_version(name, version).tags
    assert (tags[Tag.STATUS], tags["amnesia.approver"], tags["amnesia.approver_auth"]) == (
        "rejected",
        "alice",
        "mlflow",
    )


def test_behind_a_proxy_the_header_names_the_reviewer_only_from_the_proxy(
    stack_state, stack_settings: Settings, people: People
) -> None:  # type: ignore[no-untyped-def]
    admin = SecretStr(stack_state.password(MLFLOW_ADMIN))
    service = stack_settings.model_copy(update={"mlflow_tracking_username": MLFLOW_ADMIN,
                                                "mlflow_tracking_password": admin})  # fmt: skip
    app = create_app(service, f"s3://{stack_settings.bucket}", ReviewConfig(auth="proxy", proxy_header="X-Auth-User"))
    web = app.test_client()
    people("bob")
    got = web.get("/", headers={"X-Auth-User": "bob"})
    assert got.status_code == 200 and "Signed in as <b>bob</b> (proxy:X-Auth-User)" in got.text
    assert web.get("/", headers={"X-Auth-User": "nobody-known"}).status_code == 403  # MLflow has no such user
    assert web.get("/").status_code == 401  # the proxy named nobody
    far = web.get("/", headers={"X-Auth-User": "bob"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert far.status_code == 403 and "through the authenticating proxy" in far.text  # not from the proxy
    with pytest.raises(AuthError, match="must be an MLflow admin"):
        create_app(stack_settings, "s3://x", ReviewConfig(auth="proxy"))  # the runner cannot read permissions


def _chromedriver() -> str:
    found = shutil.which("chromedriver")
    if not found:
        pytest.fail(
            "chromedriver not found: `make test` installs Debian's chromium-driver (apt-get install chromium-driver)"
        )
    return found


@pytest.fixture
def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,2200",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(_chromedriver()), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _sign_in(driver: Any, base: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/login")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()
    _wait_for(driver, "who")
    assert f"Signed in as {user}" in driver.find_element(By.ID, "who").text


def _sign_out(driver: Any) -> None:
    """Sign out and wait for the answer. The click returns before the POST is answered: a sign-in begun then
    would read a CSRF token from the old session, and the logout's answer then clears it (400, no sign-in)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    button = driver.find_element(By.CSS_SELECTOR, "header form button")
    button.click()
    WebDriverWait(driver, 30).until(ec.staleness_of(button))
    _wait_for(driver, "sign-in")


def _wait_for(driver: Any, element_id: str) -> Any:
    """The element once the page that holds it has loaded (a click returns before the next page is there)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, element_id)))


def _shot(driver: Any, path: Path) -> np.ndarray:
    driver.save_screenshot(str(path))
    img = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    assert img.std() > 20, "a blank page"
    return img


def test_a_reviewer_approves_in_a_real_browser_and_the_runner_is_refused(
    stack_state, stack_settings: Settings, store: ArtifactStore, s3_prefix: str, people: People, tmp_path: Path,  # type: ignore[no-untyped-def]
    browser: Any,
) -> None:  # fmt: skip
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    name, base = f"review-ui-{uuid.uuid4().hex[:6]}", stack_state.review_url
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    gate = _gate_files(tmp_path)
    first, reqs = _candidate(stack_settings, store, s3_prefix, name, "u1", gate)
    people("alice", name)
    seen: list[str] = []

    # The runner signs in, opens its own candidate, is told it may not decide, and is refused if it tries.
    _sign_in(browser, base, MLFLOW_RUNNER, stack_state.password(MLFLOW_RUNNER))
    browser.get(f"{base}/models/{name}/versions/{first}")
    assert "amnesia-runner ran the pipeline" in browser.find_element(By.ID, "refusal").text
    browser.find_element(By.ID, "note").send_keys("approving my own work")
    browser.find_element(By.ID, "approve").click()
    assert "another person must decide" in _wait_for(browser, "error").text
    seen.append(browser.page_source)
    assert client.get_model_version(name, first).tags[Tag.STATUS] == "pending_approval"
    _sign_out(browser)

    # Alice: the queue lists the candidate, and a second one appears while the page is open, no reload.
    _sign_in(browser, base, "alice", stack_state.password("alice"))
    # One script call reads every row's key: element handles go stale when the page's poll redraws the table.
    keys = "return [...document.querySelectorAll('#pending tbody tr')].map(r => r.dataset.key)"
    rows = lambda: browser.execute_script(keys)  # noqa: E731
    assert f"{name}/{first}" in rows()
    second, _ = _candidate(stack_settings, store, s3_prefix, name, "u2", gate)
    WebDriverWait(browser, 30, poll_frequency=0.5).until(lambda _: f"{name}/{second}" in rows())
    assert "pending" in browser.find_element(By.ID, "checked").text
    row = f'tr[data-key="{name}/{second}"]'  # drawn by the page's script, and redrawn by its poll: read it whole
    added = WebDriverWait(browser, 10, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda b: b.find_element(By.CSS_SELECTOR, row).text
    )
    assert "0.02 → 0.81" in added and "0.50 → 0.49" in added and "2 2026-02-02 (2 overdue)" in added, added
    seen.append(browser.page_source)

    # Its page: verdict and checks, figures before → after, the requests and their due dates, the audit
    # chain verified now, the gate's report in a sandboxed frame.
    browser.find_element(By.CSS_SELECTOR, f'tr[data-key="{name}/{first}"] a').click()
    assert _wait_for(browser, "verdict").text == "passed"
    assert browser.find_element(By.ID, "chain-ok").text == "OK"
    figures = browser.find_element(By.ID, "figures").text
    assert "forget_score 0.020 0.810 +0.790" in figures and "mmlu 0.500 0.490 -0.010" in figures
    requests_table = browser.find_element(By.ID, "requests").text
    assert all(r.request_id in requests_table for r in reqs) and "2026-02-02" in requests_table  # received + 1 month
    assert "OVERDUE" in requests_table  # and it is long past
    checks = browser.find_elements(By.CSS_SELECTOR, "#checks tbody tr")
    assert len(checks) >= 3 and all(c.text.endswith("pass") for c in checks), [c.text for c in checks]
    page = _shot(browser, tmp_path / "candidate.png")
    near = lambda rgb: (np.abs(page - np.array(rgb)).sum(-1) < 12).sum()  # noqa: E731
    assert near([0x1D, 0x22, 0x30]) > 20000 and near([0xFD, 0xE8, 0xE8]) > 2000  # the header bar; overdue rows
    browser.switch_to.frame(browser.find_element(By.ID, "report"))
    assert "Gate: PASS" in browser.find_element(By.TAG_NAME, "body").text  # the stored, redacted report
    browser.switch_to.default_content()
    seen.append(browser.page_source)

    browser.find_element(By.ID, "note").send_keys("report, figures and the chain read")
    browser.find_element(By.ID, "approve").click()
    assert f"{name} v{first} approved by alice" in _wait_for(browser, "flash").text
    assert browser.find_element(By.ID, "champion").text == f"v{first}"
    tenure = browser.find_element(By.ID, "tenures").text
    assert f"v{first}" in tenure and "now alice mlflow" in tenure
    seen.append(browser.page_source)
    shot = _shot(browser, tmp_path / "history.png")
    assert (np.abs(shot - np.array([0xE6, 0xF4, 0xEA])).sum(-1) < 12).sum() > 5000  # the green "approved" banner

    # Dave may read the model (the server's default, READ) but not decide: told so, and refused.
    people("dave")
    _sign_out(browser)
    _sign_in(browser, base, "dave", stack_state.password("dave"))
    browser.get(f"{base}/models/{name}/versions/{second}")
    assert f"dave has READ on registered model {name}" in _wait_for(browser, "refusal").text
    browser.find_element(By.ID, "note").send_keys("looks fine to me")
    browser.find_element(By.ID, "reject").click()
    assert "deciding needs MANAGE" in _wait_for(browser, "error").text
    assert client.get_model_version(name, second).tags[Tag.STATUS] == "pending_approval"
    seen.append(browser.page_source)

    # MLflow agrees (alias, tags), and so does `amnesia history`.
    assert client.get_model_version_by_alias(name, CHAMPION).version == first
    tags = client.get_model_version(name, first).tags
    assert (tags["amnesia.approver"], tags["amnesia.approver_auth"]) == ("alice", "mlflow")
    hist = subprocess.run([sys.executable, "-m", "amnesia.cli", "history", name], capture_output=True, text=True)
    assert re.search(rf"v{first}\s+approved\s+by alice\s+\(mlflow\)", hist.stdout), hist.stdout + hist.stderr

    # Nothing a person wrote about a subject, and no subject, is on any page the reviewers saw.
    subjects = [r.subject for r in reqs]
    assert not [s for s in subjects for html in seen if s in html]
