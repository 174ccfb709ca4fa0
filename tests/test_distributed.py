"""Unlearning on several processes (torchrun, gloo on CPU): two processes give the weights one process
gives with the same config, for the sum-of-losses methods and the gradient-surgery ones, under FSDP2
and DDP; a rank killed with SIGKILL leaves checkpoints that a restart (here on one process) resumes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from amnesia.demo.prepare import DemoArtifacts
from amnesia.results.unlearn import UnlearnResult
from amnesia.science.unlearning.distributed import _units
from amnesia.stages.unlearn.checkpoint import CheckpointStore
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.stages.unlearn.stage import run_unlearn
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.models import load_model
from amnesia.storage.uri import join
from tests.test_unlearn import _split

BASE = {"layers": [0, 1], "batch_size": 4, "eval_every": 3, "checkpoint_every": 100, "lr": 3e-3}


def _weights(store: ArtifactStore, result: UnlearnResult, cache: Path) -> dict[str, torch.Tensor]:
    return load_file(store.fetch_dir(result.uri, cache) / "model.safetensors")


def test_sharding_units_are_the_modules_that_only_train(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir)).model
    mlp = [n for n, _ in model.named_parameters() if ".mlp." in n]
    assert _units(model, mlp) == ["model.layers.0.mlp", "model.layers.1.mlp"]
    # one weight of a Linear: its Linear; a whole layer list: each layer (a ModuleList has no forward)
    assert _units(model, ["model.layers.1.mlp.up_proj.weight"]) == ["model.layers.1.mlp.up_proj"]
    every_layer = [n for n, _ in model.named_parameters() if n.startswith("model.layers.")]
    assert _units(model, every_layer) == ["model.layers.0", "model.layers.1"]


@pytest.mark.parametrize(
    ("method", "strategy", "grad_accum", "args"),
    [
        ("sha256", "fsdp", 3, {}),  # 3 micro-batches on 2 processes: one gets a zero-weight filler
        pytest.param(
            "ngdiff", "ddp", 2, {},
            marks=pytest.mark.xfail(strict=False, reason=(
                "known flake: ngdiff's step is a quadratic fit clipped to [0, max_lr_factor·eta0], so the summation "
                "order of 2 processes can move it across the clip. Then the weights differ from 1 process (98% of "
                "elements, up to 2.5e-3), already at 4daf3f2. On 2026-12-03 it failed in one fresh-clone run and "
                "passed in the next, on the same machine"
            )),
        ),  # fmt: skip
        ("blur", "fsdp", 2, {"gamma": 0.5}),
        ("rmu", "ddp", 2, {"alpha": 10.0}),  # its coefficient comes from the run's first batch everywhere
        ("sam+sha256", "fsdp", 2, {"rho": 0.05}),  # eps from the whole batch's forget gradient, on shards
        # the noise drawn whole, then sharded; the teacher swapped into the shards (FSDP's gathered copy dropped)
        ("undo", "fsdp", 2, {"distill_steps": 4, "alpha": 0.5}),
    ],
)
def test_two_processes_give_the_one_process_weights(
    demo_build: DemoArtifacts,
    store: ArtifactStore,
    s3_prefix: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    method: str,
    strategy: str,
    grad_accum: int,
    args: dict[str, float],
) -> None:
    split = _split(store, demo_build, s3_prefix, n=2)
    base = BASE | {"method": method, "method_args": args, "grad_accum": grad_accum, "strategy": strategy}
    base |= {"max_steps": 7, "early_stop_forget_exact": None, "keep": "last"}
    results = {}
    for n in (1, 2):
        ctx = RunContext(f"p{n}", f"{s3_prefix}/runs/p{n}", store)
        results[n] = run_unlearn(UnlearnConfig(**base, processes=n), ctx, str(tiny_model_dir), split)
    one, two = (_weights(store, results[n], tmp_path / str(n)) for n in (1, 2))
    trained = [k for k in one if not torch.equal(one[k], load_file(tiny_model_dir / "model.safetensors")[k])]
    assert trained and all(".mlp." in k for k in trained)  # it trained, and only the MLPs
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    distilled = int(args.get("distill_steps", 0))  # UNDO's phase after the 7 steps of unlearning
    assert results[1].steps == results[2].steps == 7 + distilled
    if distilled:
        assert results[1].phases == results[2].phases
        assert [(e["phase"], e["step"], e["stopped"]) for e in results[1].phases] == [(0, 7, "max_steps")]
    for key in ("forget_exact", "retain_exact", "eval_loss"):
        assert results[2].after[key] == pytest.approx(results[1].after[key], rel=1e-4, abs=1e-6)
    history = {n: store.get_json(join(results[n].report_uri, "curves.json"))["history"] for n in (1, 2)}
    for a, b in zip(history[1], history[2], strict=True):  # the logged step means, too
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_lora_adapters_on_two_processes_give_the_one_process_weights(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path,
    strategy: str,
) -> None:  # fmt: skip
    """unlearn.adapter under FSDP2 (the adapters sharded) and DDP: the merged candidate of 2 processes is the
    merged candidate of 1, and holds only the base's tensor names."""
    split = _split(store, demo_build, s3_prefix, n=2)
    base = BASE | {"grad_accum": 2, "strategy": strategy, "max_steps": 7, "early_stop_forget_exact": None}
    base |= {"keep": "last", "adapter": {"kind": "lora", "rank": 4, "alpha": 8.0}}
    results = {}
    for n in (1, 2):
        ctx = RunContext(f"l{n}", f"{s3_prefix}/runs/l{n}", store)
        results[n] = run_unlearn(UnlearnConfig(**base, processes=n), ctx, str(tiny_model_dir), split)
    one, two = (_weights(store, results[n], tmp_path / str(n)) for n in (1, 2))
    original = load_file(tiny_model_dir / "model.safetensors")
    assert set(one) == set(two) == set(original)
    trained = [k for k in one if not torch.equal(one[k], original[k])]
    assert trained and all(".mlp." in k for k in trained)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert results[1].trainable_params == results[2].trainable_params < 0.1 * results[1].total_params


def _cli(cfg: Path, model: Path, split: str, root: str) -> subprocess.Popen[str]:
    args = ["unlearn", "--config", str(cfg), "--model", str(model), "--split", split, "--root", root]
    return subprocess.Popen(
        [sys.executable, "-m", "amnesia.cli", *args, "--run-id", "r", "--no-track"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _rank(parent: int, rank: int) -> psutil.Process | None:
    for proc in psutil.Process(parent).children(recursive=True):
        try:
            if proc.environ().get("RANK") == str(rank):
                return proc
        except psutil.Error:
            continue
    return None


def test_a_rank_killed_with_sigkill_resumes_on_another_world_size(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = _split(store, demo_build, s3_prefix, n=2)
    unlearn = BASE | {"method": "npo", "grad_accum": 2, "epochs": 60, "checkpoint_every": 4, "eval_every": 8}
    unlearn |= {"early_stop_forget_exact": None, "keep": "last", "lr": 1e-3}
    ctx = RunContext("w", f"{s3_prefix}/runs/w", store)
    whole = run_unlearn(UnlearnConfig(**unlearn), ctx, str(tiny_model_dir), split)

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"unlearn": unlearn | {"processes": 2}}))
    killed = _cli(cfg, tiny_model_dir, split.uri, s3_prefix)
    ckpts = CheckpointStore(store, join(s3_prefix, "runs", "r", "unlearn", "checkpoints"), "")
    deadline = time.monotonic() + 300
    while not ckpts.steps() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    rank1 = _rank(killed.pid, 1)
    assert killed.poll() is None and rank1 is not None, "the run ended before a rank could be killed"
    rank1.send_signal(signal.SIGKILL)
    out, err = killed.communicate(timeout=300)
    assert killed.returncode != 0 and "unlearn on 2 processes failed" in err, err[-2000:]
    assert not store.exists(join(s3_prefix, "runs", "r", "unlearn", "model", "_manifest.json"))
    stopped_at = ckpts.steps()[-1]
    assert 0 < stopped_at < whole.steps

    cfg.write_text(yaml.safe_dump({"unlearn": unlearn | {"processes": 1}}))  # the restart: one process
    resumed = _cli(cfg, tiny_model_dir, split.uri, s3_prefix)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed from the checkpoint at step" in err
    summary = store.get_json(join(s3_prefix, "runs", "r", "unlearn", "report", "summary.json"))
    assert summary["resumed_from"] == stopped_at and summary["steps"] == whole.steps
    one = _weights(store, whole, tmp_path / "w")
    folder = store.fetch_dir(join(s3_prefix, "runs", "r", "unlearn", "model"), tmp_path / "r")
    two = load_file(folder / "model.safetensors")
    for name in one:  # 2 processes up to the kill, 1 after it: the weights of 1 process throughout
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
