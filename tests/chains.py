"""Stored chains as the stages leave them, cheap to make: what registration, approval, audit, purge and the
reviewers' page read back (shared by the registry and review tests)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amnesia.governance.identity import Reviewer
from amnesia.governance.versions import BASE_EVALUATION, CANDIDATE_EVALUATION, REPORT_DIGEST
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.lineage import Tag
from amnesia.storage.requests import ErasureRequest, canonical_jsonl, request_digest
from amnesia.storage.uri import join

People = Callable[..., Reviewer]  # people(user, model=None, permission="MANAGE"): a signed-in MLflow user


def _requests(n: int, tag: str) -> list[ErasureRequest]:
    return [
        ErasureRequest(
            request_id=f"req-{tag}-{i}",
            subject=f"Person {tag} {i}",
            received_at="2026-01-02T03:04:05Z",
            ground="a",
            document_ids=[f"doc-{tag}-{i}"],
        )  # fmt: skip
        for i in range(n)
    ]


def _folder(store: ArtifactStore, uri: str, files: dict[str, Any]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        return store.put_dir(Path(tmp), uri).digest


def _chain(
    store: ArtifactStore,
    root: str,
    reqs: list[ErasureRequest],
    passed: bool = True,
    gate_files: dict[str, bytes] | None = None,
) -> tuple[str, dict]:
    """A stored chain as the stages leave it (folders with manifests, the files the audit reads) and the
    version tags that record it: what approval re-verifies before it trusts anything."""
    split, base, trace = join(root, "split"), join(root, "base"), join(root, "trace")
    model, evals, gate = join(root, "model"), join(root, "eval"), join(root, "gate")
    scores = {"task_aggregate": 0.1, "mia_score": 0.9, "mmlu": 0.5, "final": 0.5}
    summary = {"method": "sha256", "config_hash": "c" * 64, "layers": [0, 1], "steps": 5, "stopped": "epochs"}
    verdict = {"passed": passed, "codes": [] if passed else ["mmlu_below_floor"]}
    tags = {
        Tag.REQUEST_DIGEST: request_digest(reqs),
        Tag.SPLIT_URI: split,
        Tag.SPLIT_DIGEST: _folder(store, split, {"requests.jsonl": canonical_jsonl(reqs)}),
        Tag.BASE_MODEL_URI: base,
        Tag.BASE_MODEL_DIGEST: _folder(store, base, {"config.json": {}}),
        Tag.TRACE_URI: trace,
        Tag.TRACE_DIGEST: _folder(store, trace, {"aggregate.json": {"layers": [0, 1]}}),
        Tag.LAYERS: "0,1",
        Tag.MODEL_DIGEST: _folder(store, model, {"amnesia_unlearn.json": summary | {"trainable_params": 10}}),
        Tag.CONFIG_HASH: "c" * 64,
        Tag.METHOD: "sha256",
        BASE_EVALUATION: f"{evals}/base#{_folder(store, f'{evals}/base', {'result.json': scores})}",
        CANDIDATE_EVALUATION: f"{evals}/cand#{_folder(store, f'{evals}/cand', {'result.json': scores})}",
        Tag.REPORT_URI: gate,
        REPORT_DIGEST: _folder(store, gate, gate_files or {"verdict.json": verdict}),  # a real gate's, when given
        Tag.GATE_PASSED: str(passed).lower(),
    }
    return model, tags


class Inbox:
    """A webhook receiver on loopback, in a thread: what the register step's notifications deliver."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.received: list[tuple[dict[str, str], bytes]] = []
        inbox = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                inbox.received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/amnesia"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
