"""The whole DAG in kfp.local on a small configuration (the demo model, two requests), then the person's
steps: approve through the CLI, history. Plus the compiled YAML: it loads back with kfp and holds the
secrets, resources, retries and the image."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image
from pydantic import SecretStr

from amnesia.core.settings import Settings
from amnesia.demo.prepare import DemoArtifacts, demo_gate_config, demo_split_config, demo_unlearn_config
from amnesia.devstack.stack import add_user
from amnesia.governance.notify import signature
from amnesia.governance.versions import CANDIDATE, CHAMPION, NOTIFIED
from amnesia.runtime.cluster_config import ClusterConfig, Toleration
from amnesia.runtime.pipeline_config import PipelineConfig
from amnesia.runtime.summary import summarize
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag
from amnesia.storage.records import load_records
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join
from pipelines.compile import compile_pipeline
from pipelines.local import run_local
from tests.chains import Inbox
from tests.test_gate import _chromium

ROOT = Path(__file__).resolve().parent.parent


def _config(demo: DemoArtifacts, prefix: str, name: str) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "e2e",
            "model": demo.model_uri,
            "model_name": name,
            "store": {"root": prefix},
            "split": demo_split_config(demo.world_uri).model_dump(),
            "trace": {"window": 2, "k": 2, "max_facts": 8, "samples": 3, "method": "hybrid"},
            "unlearn": demo_unlearn_config().model_dump(),
            "evaluate": {"max_new_tokens": 48, "mmlu": {"uri": join(demo.world_uri, "utility"), "shots": 0}},
            "gate": demo_gate_config().model_dump(),
        }
    )


def test_dag_runs_end_to_end_in_kfp_local_then_a_person_approves(
    demo_build: DemoArtifacts, store: ArtifactStore, stack_settings: Settings, stack_state, s3_prefix: str,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:  # fmt: skip
    requests = load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))[:2]
    RequestQueue(store, s3_prefix).submit(requests)
    cfg = _config(demo_build, s3_prefix, "e2e-model")
    inbox = Inbox()  # the reviewers' webhook: told of the new candidate by the register step
    told = stack_settings.model_copy(update={"review_webhooks": inbox.url, "review_url": "http://review.example",
                                             "review_webhook_secret": SecretStr("hook-secret")})  # fmt: skip
    try:
        run_local(cfg, told, "e2e-1", tmp_path / "kfp")
    finally:
        inbox.close()

    lines = summarize(cfg, stack_settings, "e2e-1")
    text = "\n".join(lines)
    assert "status  succeeded (stopped at: end)" in text and "gate    PASS" in text, text
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment).experiment_id
    query = f"tags.`{Tag.PIPELINE_RUN_ID}` = 'e2e-1' and tags.`{Tag.ROLE}` = 'pipeline'"
    parent = client.search_runs([experiment], query)[0]  # the run at a glance: its figures and settings
    assert {"forget_score", "retain_score", "mmlu", "base.mmlu"} <= set(parent.data.metrics), parent.data.metrics
    assert parent.data.params["method"] == "sha256" and parent.data.params["base_model_uri"] == demo_build.model_uri
    assert parent.data.tags["mlflow.user"] == "amnesia-runner" and parent.info.status == "FINISHED"
    mv = client.get_model_version_by_alias("e2e-model", CANDIDATE)
    [(headers, body)] = inbox.received
    event = json.loads(body)
    assert headers["X-Amnesia-Signature"] == signature("hook-secret", body) and mv.tags[NOTIFIED] == "1/1"
    assert (event["model"], event["version"], event["requests"], event["gate"]) == (
        "e2e-model",
        mv.version,
        2,
        "passed",
    )
    assert event["url"] == f"http://review.example/models/e2e-model/versions/{mv.version}"
    assert event["figures"]["forget_score"] > 0.5 and not [r for r in requests if r.subject in body.decode()]
    assert mv.tags[Tag.STATUS] == "pending_approval" and mv.tags[Tag.PIPELINE_RUN_ID] == "e2e-1"
    assert mv.tags[Tag.MODEL_DIGEST] == store.verify(mv.source).digest  # the source is the S3 model folder
    assert mv.tags[Tag.BASE_MODEL_DIGEST] == demo_build.model_digest
    logged = client.get_logged_model(mv.tags["amnesia.logged_model"])  # figures and settings live there
    assert logged.params[Tag.REQUEST_COUNT] == "2" and {m.key for m in logged.metrics} >= {"forget_score", "base.mmlu"}
    assert len(mv.tags) <= 25, sorted(mv.tags)  # lineage ids, digests, URIs, verdict, status: no figures
    assert f"model   e2e-model version {mv.version} (pending_approval)" in text
    assert "WARNING requests OVERDUE:" in text  # the demo's requests were received in January 2026
    query = f"tags.`{Tag.PIPELINE_RUN_ID}` = 'e2e-1' and tags.`{Tag.STAGE}` = 'split'"
    assert client.search_runs([experiment], query)[0].data.metrics["requests_overdue"] == 2

    command = [sys.executable, "-m", "amnesia.cli", "approve", "e2e-model", mv.version, "--note", "report read",
               "--root", s3_prefix]  # fmt: skip
    as_runner = subprocess.run(command, capture_output=True, text=True, timeout=120)  # this shell: the pipeline's user
    assert as_runner.returncode != 0 and "amnesia-runner ran the pipeline that made e2e-model" in as_runner.stderr
    password = add_user(Path(stack_state.home), "alice")
    stack_state.mlflow_auth().grant("alice", "e2e-model", "MANAGE")
    alice = os.environ | {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": password}
    approve = subprocess.run(command, capture_output=True, text=True, timeout=120, env=alice)
    assert approve.returncode == 0 and "approved by alice" in approve.stdout, approve.stderr
    assert client.get_model_version_by_alias("e2e-model", CHAMPION).version == mv.version
    assert len(RequestQueue(store, s3_prefix).list("fulfilled")) == 2
    hist = subprocess.run([sys.executable, "-m", "amnesia.cli", "history", "e2e-model"], capture_output=True, text=True)
    assert f"v{mv.version}" in hist.stdout and "approved" in hist.stdout and "alice" in hist.stdout

    # MLflow's own way in: the champion loads as a pyfunc (from the S3 folder) and generates.
    import mlflow

    mlflow.set_tracking_uri(stack_settings.mlflow_tracking_uri)
    champion = mlflow.pyfunc.load_model("models:/e2e-model@champion")
    record = load_records(join(demo_build.world_uri, "retain.jsonl"), store=store)[0]
    out = champion.predict([record.input], params={"max_new_tokens": 12, "do_sample": False})
    assert isinstance(out[0], str) and out[0].startswith(record.input) and len(out[0]) > len(record.input), out

    # On demand, stronger: the attacks again on the registered version, into its lineage and its audit.
    attack_cfg = tmp_path / "attack.yaml"
    attack_cfg.write_text(yaml.safe_dump({"evaluate": {"max_new_tokens": 48, "mmlu": None},
                                          "gate": demo_gate_config().model_dump()}))  # fmt: skip
    attack = subprocess.run(
        [sys.executable, "-m", "amnesia.cli", "attack", "e2e-model", mv.version, "--config", str(attack_cfg),
         "--bits", "4", "--nf4", "--rtt-steps", "5", "--root", s3_prefix],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert attack.returncode in (0, 3), attack.stdout + attack.stderr  # 3: a ceiling crossed, said in a line
    assert f"attack e2e-model v{mv.version}: stored at {s3_prefix}/attacks/e2e-model/v{mv.version}/" in attack.stdout
    assert "recovery.quant.int4-g128-sym.knowledge" in attack.stdout and "recovery.quant.nf4-b64.all" in attack.stdout
    assert "relearning_recovery" in attack.stdout
    attack_run = client.search_runs([experiment], f"tags.`{Tag.ROLE}` = 'attack'")[0]
    assert "quantization_recovery" in attack_run.data.metrics

    # The auditor: the whole chain re-hashed; then one byte of the candidate changed, and it fails.
    audit = [sys.executable, "-m", "amnesia.cli", "audit", "e2e-model", mv.version]
    ok = subprocess.run([*audit, "--json", "--html", str(tmp_path / "audit.html")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    chain = json.loads(ok.stdout)
    assert chain["ok"] and chain["status"] == "approved"
    assert [link["step"] for link in chain["links"]] == [
        "requests", "data", "base model", "trace", "candidate", "evaluation before", "evaluation after", "gate",
        "approval", "attack",
    ]  # fmt: skip
    assert chain["links"][0]["detail"]["count"] == 2 and chain["links"][8]["detail"]["by"] == "alice"
    assert chain["links"][8]["detail"]["authenticated_by"] == "mlflow"
    assert set(chain["links"][9]["detail"]) == {"quantization_recovery", "relearning_recovery", "failed"}
    assert "OK</h1>" in (tmp_path / "audit.html").read_text()

    _evidence_then_purge(store, client, stack_settings, mv, s3_prefix, tmp_path)

    # Purged files are accounted for; any other missing or changed byte still fails the audit.
    split_uri = mv.tags[Tag.SPLIT_URI]
    retain = join(split_uri, "retain_eval.parquet")
    saved = store.get_bytes(retain)
    store.delete(retain)
    bad = subprocess.run(audit, capture_output=True, text=True)
    assert bad.returncode == 1 and "FAIL data" in bad.stdout, bad.stdout
    store.put_bytes(saved, retain)
    config = join(mv.source, "config.json")
    store.put_bytes(store.get_bytes(config) + b" ", config)
    bad = subprocess.run(audit, capture_output=True, text=True)
    assert bad.returncode == 1 and "FAIL candidate" in bad.stdout


def _personal_texts(store: ArtifactStore, split_uri: str) -> tuple[set[str], set[str]]:
    """The run's forget inputs/outputs (long enough not to occur by chance) and its subjects."""
    uris = [join(split_uri, f"{n}.parquet") for n in ("forget_train", "forget_eval")]
    forget = [r for u in uris for r in load_records(u, allow_empty=True, store=store)]
    texts = {t for r in forget for t in (r.input, r.output) if len(t) >= 10}
    subjects = {q.subject for q in load_requests_uri(store, join(split_uri, "requests.jsonl"))}
    return texts, subjects


def _leaks(data: bytes, needles: set[str]) -> list[str]:
    found = [n for n in needles if n.encode() in data]
    if data[:4] == b"PAR1":  # compressed pages: read the strings back
        import io

        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data)).to_pylist()
        cells = " ".join(str(v) for row in table for v in row.values())
        found += [n for n in needles if n in cells]
    return found


def _evidence_then_purge(
    store: ArtifactStore, client: MlflowClient, settings: Settings, mv: object, prefix: str, tmp_path: Path
) -> None:
    from amnesia.devstack.stack import MLFLOW_BUCKET
    from amnesia.governance.versions import BASE_EVALUATION, CANDIDATE_EVALUATION
    from amnesia.science.metrics.aggregate import membership_percentile, mia_auc
    from amnesia.science.records import ID_PATTERN
    from amnesia.storage.sealing import MAGIC, DataKeyError, sealed_key_id

    tags = mv.tags  # type: ignore[attr-defined]
    split_uri, cli = tags[Tag.SPLIT_URI], [sys.executable, "-m", "amnesia.cli"]
    texts, subjects = _personal_texts(store, split_uri)
    assert texts and len(subjects) == 2

    # At rest, the forget set is ciphertext under the run's own key; decrypted (above), it held the records.
    bucket, key = split_uri[5:].split("/", 1)
    raw = store.s3.get_object(Bucket=bucket, Key=f"{key}/forget_train.parquet")["Body"].read()
    assert raw.startswith(MAGIC) and _leaks(raw, texts | subjects) == []
    entry = {e.path: e for e in store.read_manifest(split_uri).files}["forget_train.parquet"]
    assert entry.key_id == "run-e2e-1"

    # One person's evidence: their own items' figures, before and after, equal the stored per-item results.
    report = store.get_json(join(split_uri, "split_report.json"))
    rid = report["request_ids"][0]
    docs = set(report["request_documents"][rid])
    page = tmp_path / "evidence.html"
    ev = subprocess.run([*cli, "evidence", rid, "--json", "--html", str(page), "--root", prefix],
                        capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    found = json.loads(ev.stdout)
    assert not any(s in ev.stdout or s in page.read_text() for s in subjects)  # named only when asked
    assert found["state"] == "fulfilled" and found["answered_at"] is not None
    assert found["answered_in_time"] is False  # the demo's requests were received in January 2026: late
    (run,) = found["runs"]
    assert run["model"] == f"e2e-model/{mv.version}" and run["status"] == "approved"  # type: ignore[attr-defined]
    assert run["approver"] == "alice" and run["chain_verified"] is True and run["documents"] == sorted(docs)
    for role, tag in (("before", BASE_EVALUATION), ("after", CANDIDATE_EVALUATION)):
        folder = tags[tag].partition("#")[0]
        items = [json.loads(x) for x in store.get_bytes(join(folder, "items.jsonl")).splitlines()]
        mine = [i for i in items if i["set"] == "forget" and ID_PATTERN.match(i["id"])["doc"] in docs]
        qa = [i["score"] for i in mine if i["kind"] == "qa"]
        sc = [i["score"] for i in mine if i["kind"] == "sc"]
        assert run[role]["items"] == len(mine) > 0
        assert run[role]["knowledge"] == pytest.approx(sum(qa) / len(qa))
        assert run[role]["regurgitation"] == pytest.approx(sum(sc) / len(sc))
        losses = [json.loads(x) for x in store.get_bytes(join(folder, "mia.jsonl")).splitlines()]
        theirs = [r["loss"] for r in losses if r["member"] and r["id"] in docs]
        others = [r["loss"] for r in losses if not r["member"]]
        assert run[role]["mia_auc"] == pytest.approx(mia_auc(theirs, others))
        # the per-person attacks: their items' extraction share, their documents' membership percentile
        assert run[role]["extraction"] == pytest.approx(sum(i["extracted"] for i in mine) / len(mine))
        assert run[role]["membership"] == pytest.approx(max(membership_percentile(x, others) for x in theirs))
    assert run["before"]["extraction"] == 1.0 and run["after"]["extraction"] < run["before"]["extraction"]
    assert any(k.startswith("rtt.") for k in run["recoveries"]), run["recoveries"]
    named = subprocess.run([*cli, "evidence", rid, "--show-subject", "--root", prefix], capture_output=True, text=True)
    assert any(s in named.stdout for s in subjects)
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert rid in dom.stdout and f"{run['after']['knowledge']:.3f}" in dom.stdout and "LATE" in dom.stdout
    shot = tmp_path / "evidence.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1000,1200", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert (np.abs(img[:250] - np.array([0xC0, 0x39, 0x2B])).sum(-1) < 30).sum() > 500  # the red LATE banner

    # Purge: refused targets are named; a dry run changes nothing; the purge leaves only evidence.
    dry = subprocess.run([*cli, "purge", "--request", rid, "--dry-run", "--root", prefix], capture_output=True,
                         text=True)  # fmt: skip
    assert dry.returncode == 0 and "destroy data keys run-e2e-1" in dry.stdout and "forget_train.parquet" in dry.stdout
    assert store.exists(join(split_uri, "forget_train.parquet"))
    done = subprocess.run([*cli, "purge", "--request", rid, "--by", "carol", "--root", prefix], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0 and "purged runs e2e-1" in done.stdout, done.stderr
    with pytest.raises(DataKeyError, match="destroyed"):
        store.keys.get("run-e2e-1")

    needles = texts | subjects
    leaks = []
    for uri in store.list(prefix):
        if f"{prefix}/requests/" in uri:  # the request register itself (the controller's record of requests)
            continue
        data = store.s3.get_object(Bucket=uri[5:].split("/", 1)[0], Key=uri[5:].split("/", 1)[1])["Body"].read()
        # Sealed with the run's key: gone. Only a standing obligation's checks stay sealed, under its own key,
        # until the obligation ends (amnesia.storage.obligations).
        kept = f"{prefix}/obligations/" in uri and (sealed_key_id(data) or "").startswith("obligation-")
        assert kept or not data.startswith(MAGIC), f"{uri}: sealed personal data left after the purge"
        leaks += [f"{uri}: {n[:12]}…" for n in _leaks(data, needles)]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`amnesia.pipeline_run_id` = 'e2e-1'")  # fmt: skip
    assert len(runs) >= 7
    for r in runs:  # MLflow: tags, params and every artifact of the pipeline run's runs
        values = " ".join([*r.data.tags.values(), *r.data.params.values()])
        leaks += [f"run {r.info.run_name}: {n[:12]}…" for n in needles if n in values]
        artifacts = r.info.artifact_uri.replace("mlflow-artifacts:", f"s3://{MLFLOW_BUCKET}/artifacts")
        for uri in store.list(artifacts):
            leaks += [f"{uri}: {n[:12]}…" for n in _leaks(store.get_bytes(uri), needles)]
    version_tags = " ".join(client.get_model_version("e2e-model", mv.version).tags.values())  # type: ignore[attr-defined]
    leaks += [n for n in needles if n in version_tags]
    assert leaks == []

    audit = subprocess.run([*cli, "audit", "e2e-model", mv.version, "--json"], capture_output=True, text=True)  # type: ignore[attr-defined]
    assert audit.returncode == 0, audit.stdout + audit.stderr
    chain = json.loads(audit.stdout)
    links = {link["step"]: link for link in chain["links"]}
    assert chain["ok"] and "purged on" in links["data"]["what"] and "by carol" in links["data"]["what"]
    assert links["requests"]["ok"] and links["requests"]["detail"]["purged"] == ["requests.jsonl"]
    assert links["purge"]["detail"]["by"] == "carol" and links["purge"]["detail"]["runs"] == ["e2e-1"]
    assert "generations.jsonl" in links["evaluation after"]["detail"]["purged"]
    after = json.loads(subprocess.run([*cli, "evidence", rid, "--json", "--root", prefix], capture_output=True,
                                      text=True).stdout)  # fmt: skip
    assert after["runs"][0]["after"] == run["after"] and after["runs"][0]["purged"][0]["by"] == "carol"


def test_compiled_yaml_holds_secrets_resources_retries_and_image(tmp_path: Path) -> None:
    from kfp import components

    gpu_taint = Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    cluster = ClusterConfig(
        image="registry.example/amnesia:9.9.9",
        node_selector={"pool": "gpu"},
        tolerations=[gpu_taint],
        accelerator="nvidia.com/gpu",
    )
    out = compile_pipeline(cluster, tmp_path / "pipeline.yaml")
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "selective-amnesia-unlearning"
    docs = list(yaml.safe_load_all(out.read_text()))
    spec, platform = docs[0], docs[1]
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/amnesia:9.9.9"}
    keystores = [{v["name"]: v["value"] for v in e["container"]["env"]}["AMNESIA_KEYSTORE"] for e in executors.values()]
    assert set(keystores) == {"k8s:amnesia/amnesia-data-keys"}  # every stage seals/opens with the runs' keys
    gpu = [e for e in executors.values() if "accelerator" in e["container"].get("resources", {})]
    assert len(gpu) == 4  # trace, unlearn, evaluate base, evaluate candidate
    assert all(e["container"]["resources"]["accelerator"]["resourceCount"] == "1" for e in gpu)
    tasks = spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    inner = spec["components"][tasks]["dag"]["tasks"]
    assert {n for n, t in inner.items() if "retryPolicy" in t} == {"trace", "unlearn", "evaluate", "evaluate-2"}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {name: {s["secretName"] for s in e["secretAsEnv"]} for name, e in k8s.items()}
    assert all(got >= {"amnesia-s3", "amnesia-mlflow"} for got in secrets.values()), secrets
    told = [name for name, got in secrets.items() if "amnesia-review-notify" in got]  # the register step only
    assert len(told) == 1 and "register" in told[0], secrets
    assert [s["optional"] for s in k8s[told[0]]["secretAsEnv"] if s["secretName"] == "amnesia-review-notify"] == [True]
    with_selector = [e for e in k8s.values() if "nodeSelector" in e]
    assert len(with_selector) == 4 and all(e["tolerations"][0]["key"] == "nvidia.com/gpu" for e in with_selector)

    # cluster.search_parallel: the settings search's trials fan out (two rounds), each trial a GPU task
    fanned = compile_pipeline(cluster.model_copy(update={"search_parallel": 3}), tmp_path / "fanned.yaml")
    spec = next(yaml.safe_load_all(fanned.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    gpu = {name.removeprefix("exec-") for name, e in executors.items()
           if "accelerator" in e["container"].get("resources", {})}  # fmt: skip
    assert gpu == {"trace", "unlearn", "evaluate", "evaluate-2", "search-plan", "search-plan-2", "search-trial",
                   "search-trial-2", "search-choose"}, gpu  # fmt: skip
    inner = spec["components"][tasks]["dag"]["tasks"]
    loops = {n: t for n, t in inner.items() if "iteratorPolicy" in t}  # two rounds, each its own loop
    assert [t["iteratorPolicy"]["parallelismLimit"] for t in loops.values()] == [3, 3]
    assert [t["parameterIterator"]["items"]["inputParameter"] for t in loops.values()] == [
        "pipelinechannel--search-plan-Output", "pipelinechannel--search-plan-2-Output"]  # fmt: skip
    in_loops = [spec["components"][t["componentRef"]["name"]]["dag"]["tasks"] for t in loops.values()]
    assert [set(dag) for dag in in_loops] == [{"search-trial"}, {"search-trial-2"}]
    assert all("retryPolicy" in task for dag in in_loops for task in dag.values())
    assert {n for n, t in inner.items() if "retryPolicy" in t} >= {"search-plan", "search-plan-2", "search-choose"}
    assert inner["unlearn"]["inputs"]["parameters"]["search_json"]["taskOutputParameter"]["producerTask"] == (
        "search-choose")


def test_schedule_wants_six_cron_fields_and_runs_take_the_job_id(tmp_path: Path) -> None:
    from amnesia.core.errors import ConfigError
    from pipelines.remote import check_cron

    for good in ("0 0 3 * * *", "0 */15 9-17 * * MON-FRI", "0 0 0 1,15 * ?", "0 30 2 * JAN,JUL SUN"):
        assert check_cron(good) == good
    for bad in ("0 3 * * *", "0 0 3 * * * *", "0 0 3 * * ;rm"):
        with pytest.raises(ConfigError, match="KFP wants 6 fields, seconds first"):
            check_cron(bad)
    for bad, why in (("0 0 25 * * *", "hours '25' is not in 0-23"), ("0 0 3 0 * *", "day of month '0' is not in 1-31"),
                     ("0 0 3 * * 7", "day of week '7' is not in 0-6"), ("0 0 5-3 * * *", "the range runs backwards"),
                     ("0 */0 3 * * *", "a step of 0"), ("0 0 3 * * FUN", "day of week 'FUN'")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"--cron '{re.escape(bad)}': .*{re.escape(why)}"):
            check_cron(bad)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": "s3://b/m", "split": {"forget": "f.jsonl", "retain": "r.jsonl"}}))
    out = subprocess.run(
        [sys.executable, "-m", "amnesia.cli", "schedule", "--config", str(cfg), "--host", "http://127.0.0.1:9",
         "--cron", "0 3 * * *"], capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 1 and "Error: --cron '0 3 * * *': KFP wants 6 fields" in out.stderr
    unreachable = subprocess.run(  # nothing listens on port 9: one line, no traceback
        [sys.executable, "-m", "amnesia.cli", "schedule", "--config", str(cfg), "--host", "http://127.0.0.1:9",
         "--cron", "0 0 3 * * *"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    errors = [line for line in unreachable.stderr.splitlines() if line.startswith("Error: ")]
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr, unreachable.stderr
    assert errors and errors[0].startswith("Error: KFP at http://127.0.0.1:9: ") and "refused" in errors[0], errors
    assert all(errors[0].count(q) % 2 == 0 for q in "'\"") and errors[0].count("(") == errors[0].count(")"), errors
    plain = compile_pipeline(ClusterConfig(), tmp_path / "plain.yaml").read_text()
    assert "accelerator" not in plain  # GPUs only when the cluster section asks for them
    recurring = compile_pipeline(ClusterConfig(), tmp_path / "recurring.yaml", run_id_from_job=True).read_text()
    assert "{{$.pipeline_job_uuid}}" in recurring
    assert "{{$.pipeline_job_uuid}}" not in compile_pipeline(ClusterConfig(), tmp_path / "one.yaml").read_text()


def compile_against_golden(out: Path, golden: str, *options: str) -> None:
    """`amnesia compile` (golden image tag) to out, compared with tests/golden/<golden>; after an intended
    change, AMNESIA_UPDATE_GOLDEN=1 rewrites the golden file."""
    import os

    args = ["compile", *options, "--image", "ghcr.io/selective-amnesia/amnesia:golden", "-o", str(out)]
    run = subprocess.run([sys.executable, "-m", "amnesia.cli", *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    path = ROOT / "tests" / "golden" / golden
    if os.environ.get("AMNESIA_UPDATE_GOLDEN"):
        path.write_text(out.read_text())
    assert out.read_text() == path.read_text(), "compiled pipeline changed: review it, then update the golden file"


def test_compile_matches_the_golden_file(tmp_path: Path) -> None:
    """`amnesia compile` output is reviewed like code: a change to the DAG or a component shows up here.
    After an intended change: AMNESIA_UPDATE_GOLDEN=1 pytest tests/test_pipeline.py -k golden"""
    compile_against_golden(tmp_path / "pipeline.yaml", "pipeline.yaml")


def test_a_failing_stage_is_recorded_by_the_exit_handler(
    demo_build: DemoArtifacts, stack_settings: Settings, s3_prefix: str, tmp_path: Path
) -> None:
    cfg = _config(demo_build, s3_prefix, "e2e-fail")
    bad = join(s3_prefix, "bad-corpus.jsonl")  # there (preflight passes), but not records: split fails
    ArtifactStore(stack_settings).put_bytes(b'{"id": "x"}\n', bad)
    cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"corpus": bad})})
    RequestQueue(ArtifactStore(stack_settings), s3_prefix).submit(
        load_requests_uri(ArtifactStore(stack_settings), join(demo_build.world_uri, "requests.jsonl"))[:1]
    )
    with pytest.raises(RuntimeError, match="FAILURE"):
        run_local(cfg, stack_settings, "e2e-fail-1", tmp_path / "kfp")
    text = "\n".join(summarize(cfg, stack_settings, "e2e-fail-1"))
    assert "status  failed (stopped at: split)" in text, text
    assert f"error   split: {bad}: line 1: field 'id'" in text, text  # its own line, not a traceback
