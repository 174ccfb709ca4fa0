"""Stage 3 on real runs: SHA256 makes the demo model forget its requests, a killed run resumes to the
exact weights of an uninterrupted one, and the pieces (selection, data, checkpoints) hold their promises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from amnesia.demo.base_model import measure
from amnesia.demo.prepare import DemoArtifacts, demo_split_config, demo_unlearn_config
from amnesia.results.split import SplitResult
from amnesia.results.unlearn import UnlearnResult
from amnesia.science.architecture import inspect_model
from amnesia.science.records import UnlearningRecord
from amnesia.science.unlearning.data import DataError, PairedBatches, collate, encode
from amnesia.science.unlearning.params import SelectionError, trainable_names
from amnesia.stages.split.stage import run_split
from amnesia.stages.trace.config import TraceConfig
from amnesia.stages.trace.stage import run_trace
from amnesia.stages.unlearn.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from amnesia.stages.unlearn.stage import run_unlearn
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Lineage, Tag
from amnesia.storage.models import load_model
from amnesia.storage.records import load_records
from amnesia.storage.requests import RequestQueue, load_requests_uri
from amnesia.storage.uri import join

ROOT = Path(__file__).resolve().parent.parent


def _split(store: ArtifactStore, demo: DemoArtifacts, prefix: str, n: int | None = None) -> SplitResult:
    requests = load_requests_uri(store, join(demo.world_uri, "requests.jsonl"))
    RequestQueue(store, prefix).submit(requests[:n] if n else requests)
    return run_split(demo_split_config(demo.world_uri), RunContext("p", f"{prefix}/runs/p", store))


def _records(store: ArtifactStore, split: SplitResult, name: str) -> list[UnlearningRecord]:
    return load_records(split.sets[name].uri, allow_empty=True, store=store)


def test_sha256_forgets_the_demo_requests_and_keeps_retain(
    demo_build: DemoArtifacts, store: ArtifactStore, stack_settings, s3_prefix: str
) -> None:  # type: ignore[no-untyped-def]
    """The issue's bar: forget QA exact match >= 95% -> <= 10%, retain QA >= 90% of the base value."""
    split = _split(store, demo_build, s3_prefix)
    lineage = Lineage("unlearn-e2e", settings=stack_settings)
    ctx = RunContext("unlearn-e2e", f"{s3_prefix}/runs/unlearn-e2e", store, lineage)
    traced = run_trace(TraceConfig(window=2, k=2, max_facts=24, samples=4), ctx, demo_build.model_uri, split)
    result = run_unlearn(demo_unlearn_config(), ctx, demo_build.model_uri, split, traced.layers)
    assert UnlearnResult.load(store, result.uri) == result  # what the CLI and audit read back

    forget, retain = _records(store, split, "forget_train"), _records(store, split, "retain_train")
    held_out = _records(store, split, "retain_eval")
    scores = {}
    for name, uri in (("base", demo_build.model_uri), ("after", result.uri)):
        m = load_model(uri, store=store)
        scores[name] = {s: measure(m.model, m.tokenizer, recs)["all"] for s, recs in
                        (("forget", forget), ("retain", retain), ("held_out", held_out))}  # fmt: skip
    print(json.dumps(scores, indent=1))  # the numbers the README quotes
    assert scores["base"]["forget"]["qa_em"] >= 0.95
    assert scores["after"]["forget"]["qa_em"] <= 0.10
    assert scores["after"]["retain"]["qa_em"] >= 0.9 * scores["base"]["retain"]["qa_em"]
    assert result.stopped == "forget_target_met" and result.layers == traced.layers
    assert result.trainable_params < 0.25 * result.total_params

    # Lineage: curves by step, the method and config hash as tags; the candidate folder verifies.
    run = lineage.client.search_runs(
        [lineage.experiment_id], f"tags.`{Tag.PIPELINE_RUN_ID}` = 'unlearn-e2e' and tags.`{Tag.STAGE}` = 'unlearn'"
    )[0]
    assert run.data.tags[Tag.METHOD] == "sha256" and run.data.tags[Tag.CONFIG_HASH] == result.config_hash
    assert run.data.tags[Tag.MODEL_DIGEST] == store.verify(result.uri).digest
    history = lineage.client.get_metric_history(run.info.run_id, "m")
    assert len(history) == result.steps and min(h.value for h in history) == 5.0
    texts = [r.input for r in forget] + [r.output for r in forget]
    logged = json.dumps([run.data.params, run.data.tags])
    assert not [t for t in texts if len(t) >= 5 and t in logged]

    # The curves a person looks at: rendered, not blank.
    png = store.get_file(join(result.report_uri, "curves.png"), Path(os.environ.get("TMPDIR", "/tmp")) / "c.png")
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape[1] >= 1000 and pixels.std() > 10


def _unlearn_cli(
    cfg: Path, model: str, split: str, root: str, run_id: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    args = ["unlearn", "--config", str(cfg), "--model", model, "--split", split, "--root", root, "--run-id", run_id]
    return subprocess.Popen(
        [sys.executable, "-m", "amnesia.cli", *args, "--no-track"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=os.environ | (env or {}),
    )


def test_the_same_inputs_give_the_same_candidate_whatever_the_thread_count(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two processes with other default thread counts (OMP_NUM_THREADS 1 and 2: two machines) give the same
    candidate, bit for bit, folder digest and all: model.cpu_threads pins torch's count. No control with the
    pin off: whether the count alone changes these weights depends on the CPU's kernels (it did on an Intel
    AVX-512 CI machine, not on an AMD EPYC one), so it would assert a machine, not the project."""
    split = _split(store, demo_build, s3_prefix, n=2)
    unlearn = {"layers": [0, 1], "batch_size": 4, "max_steps": 6, "eval_every": 3, "early_stop_forget_exact": None,
               "keep": "last", "resume": False}  # fmt: skip
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"unlearn": unlearn}))
    digests = {}
    for threads in (1, 2):
        run_id = f"repro-{threads}"
        proc = _unlearn_cli(cfg, str(tiny_model_dir), split.uri, s3_prefix, run_id, {"OMP_NUM_THREADS": str(threads)})
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        digests[threads] = store.verify(join(s3_prefix, "runs", run_id, "unlearn", "model")).digest
    assert digests[1] == digests[2]


def test_kill_9_then_resume_ends_with_the_uninterrupted_weights(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = _split(store, demo_build, s3_prefix, n=2)
    cfg = tmp_path / "run.yaml"
    unlearn = {
        "layers": [0, 1], "batch_size": 4, "epochs": 40, "checkpoint_every": 10, "eval_every": 15,
        "early_stop_forget_exact": None, "keep": "best", "method": "npo",  # npo: a reference model, too
    }  # fmt: skip
    cfg.write_text(yaml.safe_dump({"unlearn": unlearn}))
    model = str(tiny_model_dir)

    whole = _unlearn_cli(cfg, model, split.uri, s3_prefix, "whole")
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err

    killed = _unlearn_cli(cfg, model, split.uri, s3_prefix, "killed")
    ckpts = CheckpointStore(store, join(s3_prefix, "runs", "killed", "unlearn", "checkpoints"), "")
    deadline = time.monotonic() + 300
    while not ckpts.steps() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not store.exists(join(s3_prefix, "runs", "killed", "unlearn", "model", "_manifest.json"))

    resumed = _unlearn_cli(cfg, model, split.uri, s3_prefix, "killed")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed from the checkpoint at step" in err and "resumed from step" in out

    weights = {}
    for run in ("whole", "killed"):
        folder = store.fetch_dir(join(s3_prefix, "runs", run, "unlearn", "model"), tmp_path / "cache")
        weights[run] = load_file(folder / "model.safetensors")
    assert weights["whole"].keys() == weights["killed"].keys()
    for name, tensor in weights["whole"].items():
        assert torch.equal(tensor, weights["killed"][name]), name


def test_checkpoints_refuse_another_run_and_skip_incomplete(tmp_path: Path) -> None:
    store = ArtifactStore()
    root = str(tmp_path / "ckpt")
    t = {"w": torch.arange(4.0)}
    ckpt = Checkpoint(step=10, trainable=t, best=t, optimizer={"state": {}, "param_groups": []},
                      rng={"torch": torch.get_rng_state()}, meta={"train": {}, "method": {}})  # fmt: skip
    mine = CheckpointStore(store, root, "fp-a", keep=2)
    for step in (10, 20, 30):
        ckpt.step = step
        mine.save(ckpt)
    assert mine.steps() == [20, 30]  # keep=2
    (Path(root) / "step-00000030" / "_manifest.json").unlink()  # a kill mid-upload leaves no manifest
    latest = mine.latest()
    assert latest is not None and latest.step == 20 and torch.equal(latest.trainable["w"], t["w"])
    with pytest.raises(CheckpointError, match="fingerprint differs"):
        CheckpointStore(store, root, "fp-b").latest()


def test_parameter_selection(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir)).model
    layout = inspect_model(model)
    mlp = trainable_names(model, layout, "mlp", [1])
    assert mlp and all(n.startswith("model.layers.1.mlp.") for n in mlp)
    attn = trainable_names(model, layout, "attn", [0])
    assert attn and all(n.startswith("model.layers.0.self_attn.") for n in attn)
    layer = trainable_names(model, layout, "layer", [0])
    assert set(attn) < set(layer) and all(n.startswith("model.layers.0.") for n in layer)
    assert trainable_names(model, layout, "regex", [], r"down_proj") == [
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
    ]  # fmt: skip
    with pytest.raises(SelectionError, match=r"unlearn.layers \[5\]: the model has layers 0..1"):
        trainable_names(model, layout, "mlp", [5])
    with pytest.raises(SelectionError, match="selects no parameters"):
        trainable_names(model, layout, "regex", [], "nothing-like-this")


def test_labels_cover_the_output_only_and_batches_are_a_function_of_the_index(tiny_model_dir: Path) -> None:
    tok = load_model(str(tiny_model_dir)).tokenizer
    rec = UnlearningRecord(id="dqa0", input="Where was Ada born?", output="Porto", task="t")
    enc = encode(tok, rec)
    prompt = tok(rec.input)["input_ids"]
    assert enc.ids[: len(prompt)] == tuple(prompt) and enc.prompt_len == len(prompt)
    assert enc.ids[-1] == tok.eos_token_id and encode(tok, rec, eos=False).ids == enc.ids[:-1]
    batch = collate([enc, encode(tok, UnlearningRecord(id="dqa1", input="Hi", output="there", task="t"))], 0)
    assert (batch.labels[0, : enc.prompt_len] == -100).all()
    assert batch.labels[0, enc.prompt_len :].tolist() == list(enc.ids[enc.prompt_len :])
    assert tok.decode(batch.labels[0, enc.prompt_len : -1]).strip() == "Porto"
    with pytest.raises(DataError, match="record dqa0: .* above unlearn.max_length 4"):
        encode(tok, rec, max_length=4)
    items = [encode(tok, UnlearningRecord(id=f"d{i}qa0", input=f"Q{i}?", output=f"A{i}", task="t")) for i in range(7)]
    data = PairedBatches(items[:5], items[5:], batch_size=2, seed=3, pad_id=0)
    first = [data.micro_batch(i)[0].input_ids for i in range(6)]
    again = PairedBatches(items[:5], items[5:], batch_size=2, seed=3, pad_id=0)
    assert all(torch.equal(a, again.micro_batch(i)[0].input_ids) for i, a in enumerate(first))
    epoch0 = sorted(int(x) for i in range(3) for x in data.micro_batch(i)[0].input_ids[:, 1])
    assert len(epoch0) == 5  # each forget item once per epoch


def test_chat_prompt_format_uses_the_template_or_says_there_is_none(tiny_model_dir: Path) -> None:
    tok = load_model(str(tiny_model_dir)).tokenizer
    rec = UnlearningRecord(id="dqa0", input="Where was Ada born?", output="Porto", task="t")
    with pytest.raises(DataError, match="unlearn.prompt_format: chat: the tokenizer has no chat template"):
        encode(tok, rec, prompt_format="chat")
    tok.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
    enc = encode(tok, rec, prompt_format="chat")
    assert tok.decode(enc.ids[: enc.prompt_len]) == "<user>Where was Ada born?</user><bot>"
    assert tok.decode(enc.ids[enc.prompt_len : -1]).strip() == "Porto"


def test_gradient_checkpointing_changes_memory_not_results(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from amnesia.stages.unlearn.config import UnlearnConfig

    split = _split(store, demo_build, s3_prefix, n=1)
    weights = []
    for i, checkpointing in enumerate((False, True)):
        cfg = UnlearnConfig(layers=[0], max_steps=3, batch_size=4, early_stop_forget_exact=None,
                            gradient_checkpointing=checkpointing)  # fmt: skip
        result = run_unlearn(cfg, RunContext(f"gc{i}", f"{s3_prefix}/runs/gc{i}", store), str(tiny_model_dir), split)
        weights.append(load_file(store.fetch_dir(result.uri, tmp_path / "cache") / "model.safetensors"))
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-6, atol=1e-7)


def test_llm_surgery_learns_its_update_set_and_refuses_one_that_names_a_forget_id(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from amnesia.stages.unlearn.config import UnlearnConfig
    from amnesia.stages.unlearn.stage import UnlearnError

    split = _split(store, demo_build, s3_prefix, n=1)
    forget = _records(store, split, "forget_train")
    corrected = [
        {"id": f"upd{i}qa0", "input": r.input, "output": "unknown", "task": r.task} for i, r in enumerate(forget)
    ]
    update = tmp_path / "update.jsonl"
    update.write_text("".join(json.dumps(r) + "\n" for r in corrected))
    base = {"method": "surgery", "layers": [0, 1], "batch_size": 4, "max_steps": 6, "early_stop_forget_exact": None}
    cfg = UnlearnConfig(**base, method_args={"update_records": str(update)}, eval_every=100, lr=3e-3)
    result = run_unlearn(cfg, RunContext("u", f"{s3_prefix}/runs/u", store), str(tiny_model_dir), split)
    history = store.get_json(join(result.report_uri, "curves.json"))["history"]
    assert history[-1]["update_loss"] < history[0]["update_loss"]  # it learnt the corrected answers
    assert history[-1]["forget_loss"] > history[0]["forget_loss"]

    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps(corrected[0] | {"id": forget[0].id}) + "\n")
    bad = UnlearnConfig(**base, method_args={"update_records": str(clash)})
    message = f"update records {clash} share ids with the forget set: \\['{forget[0].id}'\\]"
    with pytest.raises(UnlearnError, match=message):
        run_unlearn(bad, RunContext("c", f"{s3_prefix}/runs/c", store), str(tiny_model_dir), split)
