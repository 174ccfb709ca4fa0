"""`amnesia demo prepare`: the demo world's data and its memorising base model, into the artifact store.

Both live under a content address of their inputs (generator version, world config, training
config), so a second prepare with the same inputs reuses them and a changed input rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from amnesia.core.config import StrictModel
from amnesia.demo.base_model import TrainConfig, train_base_model
from amnesia.demo.world import GENERATOR_VERSION, WorldConfig, generate
from amnesia.stages.evaluate.config import EvaluateConfig, MMLUConfig
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.split.config import SplitConfig
from amnesia.stages.trace.config import TraceConfig
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.uri import MANIFEST_NAME, join


class DemoConfig(StrictModel):
    world: WorldConfig = WorldConfig()
    train: TrainConfig = TrainConfig()


class DemoArtifacts(BaseModel):
    key: str
    world_uri: str
    world_digest: str
    model_uri: str
    model_digest: str
    memorisation: dict[str, object]
    reused: bool


def content_key(cfg: DemoConfig) -> str:
    """The address of a demo build: a hash of everything that decides its bytes."""
    canonical = json.dumps(
        {"generator_version": GENERATOR_VERSION, "demo": cfg.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def prepare(
    cfg: DemoConfig, store: ArtifactStore, root: str, echo: Callable[[str], None] = print, force: bool = False
) -> DemoArtifacts:
    key = content_key(cfg)
    world_uri = join(root, "demo", key, "world")
    model_uri = join(root, "demo", key, "base-model")
    have = store.exists(join(world_uri, MANIFEST_NAME)) and store.exists(join(model_uri, MANIFEST_NAME))
    timing = join(root, "demo", key, "build-time.json")  # beside the model, not in it: its digest has no clock
    if have and not force:
        build = json.loads(store.get_bytes(join(model_uri, "amnesia_build.json")))
        seconds = json.loads(store.get_bytes(timing))["seconds"] if store.exists(timing) else None
        return DemoArtifacts(
            key=key,
            world_uri=world_uri,
            world_digest=store.ref(world_uri).digest,
            model_uri=model_uri,
            model_digest=store.ref(model_uri).digest,
            memorisation=build["memorisation"] | {"seconds": seconds},
            reused=True,
        )

    world = generate(cfg.world)
    with tempfile.TemporaryDirectory() as tmp:
        world_ref = store.put_dir(world.write(Path(tmp) / "world"), world_uri)
        echo(
            f"world   {len(world.forget)} forget + {len(world.retain)} retain items, "
            f"{len(world.requests)} requests, {len(world.mia_nonmembers)} MIA non-members -> {world_uri}"
        )
        mem = train_base_model(world, cfg.train, Path(tmp) / "model", log=lambda m: echo(f"train   {m}"))
        model_ref = store.put_dir(Path(tmp) / "model", model_uri)
        store.put_bytes(json.dumps({"seconds": round(mem.seconds, 1)}).encode(), timing, "application/json")
    memorisation = {
        "qa_em": mem.qa_em,
        "sc_rouge_l": mem.sc_rouge_l,
        "by_split": mem.by_split,
        "epochs": mem.epochs,
        "seconds": round(mem.seconds, 1),
    }
    return DemoArtifacts(
        key=key,
        world_uri=world_uri,
        world_digest=world_ref.digest,
        model_uri=model_uri,
        model_digest=model_ref.digest,
        memorisation=memorisation,
        reused=False,
    )


def print_summary(result: DemoArtifacts, echo: Callable[[str], None] = print) -> None:
    mem = result.memorisation
    echo(f"{'reused' if result.reused else 'built'} demo {result.key}")
    echo(f"  data        {result.world_uri}  (digest {result.world_digest[:16]}…)")
    echo(f"  base model  {result.model_uri}  (digest {result.model_digest[:16]}…)")
    by = mem.get("by_split", {})
    for split in ("forget", "retain"):
        if split in by:  # type: ignore[operator]
            m = by[split]  # type: ignore[index]
            echo(f"  memorised   {split}: QA exact match {m['qa_em']:.3f}, SC ROUGE-L recall {m['sc_rouge_l']:.3f}")
    took = f" in {mem['seconds']} s" if mem.get("seconds") is not None else ""
    echo(f"  trained     {mem.get('epochs')} epochs{took}")


def demo_split_config(world_uri: str) -> SplitConfig:
    """Stage 1 on the demo world: its corpus against the pending request queue, its MIA documents."""
    return SplitConfig(
        corpus=join(world_uri, "corpus.jsonl"),
        requests="queue",
        mia_members=join(world_uri, "mia", "member.jsonl"),
        mia_nonmembers=join(world_uri, "mia", "nonmember.jsonl"),
    )


def demo_unlearn_config() -> UnlearnConfig:
    """SHA256 on the demo model. Its retain loss starts near 0.01 (it memorised the world), so the paper's
    m range (1.2-2.8, set for OLMo-1B) barely weighs the retain term against ascent; measured on the demo
    world, m in [5, 20] with retain batches twice the forget batches keeps the retain people (see README).
    It stops when every person is forgotten, not only the average: with the average alone (5% of items still
    reproduced), one person's forget score stayed at 0.207 on an Intel CPU (the per-request floor is 0.3);
    with no person above a quarter of their items, the lowest is at 0.54 (seed 0; README)."""
    return UnlearnConfig(
        method="sha256", method_args={"m_min": 5.0, "m_max": 20.0}, retain_batch_size=32, epochs=60, lr=1e-3,
        early_stop_per_document=0.25,
    )  # fmt: skip


def demo_evaluate_config(world_uri: str) -> EvaluateConfig:
    """The demo model answers in under 64 tokens and its context is 160 positions; its utility set
    (MMLU columns) was trained zero-shot, so it is asked zero-shot."""
    return EvaluateConfig(max_new_tokens=64, mmlu=MMLUConfig(uri=join(world_uri, "utility"), shots=0))


def demo_gate_config() -> GateConfig:
    """The default floors and ceilings but two, each placed so the demo clears it by at least twice its
    noise (the spread over seeds of the unlearning's data order and the relearning folds; `bench/methods.py
    --methods sha256 --seeds 4`, README):
    - held-out people may keep 60% (default 90%) of the base model's score: the 2M-parameter demo model
      stores everyone's facts in the same few MLP units, so forgetting 16 people costs the others
      (0.70 of base, sd 0.025);
    - relearning may bring back 45% (default 25%): 20 fine-tuning steps on the other folds give back
      0.25 of what this small model forgot (sd 0.08, 0.13 to 0.29 over seeds), so the default ceiling
      sat on the mean and the demo passed or failed by the seed;
    - a person's answers may come out under sampling for 75% (default 25%) of their items: 8 samples at T=1
      bring back up to half of one person's 8 items (the most exposed person: 0.50, 0.25, 0.25 over seeds 0-2,
      sd 0.14), though greedy decoding gives them back for few; unlearning until none is reproduced greedily
      removes that and takes the held-out people to 0.38. A real model keeps the defaults."""
    return GateConfig(
        held_out_retain_relative_floor=0.6, relearning_recovery_ceiling=0.45, per_request_extraction_ceiling=0.75
    )


def demo_trace_config() -> TraceConfig:
    """Tracing for the 6-layer demo model: ROME's window of 10 would restore every layer at once,
    making all rows alike, so restore 2 at a time and pick 2 layers."""
    return TraceConfig(window=2, k=2)


def local_base_model(
    cfg: DemoConfig | None = None, cache_root: Path | None = None, echo: Callable[[str], None] = print
) -> Path:
    """The demo base model as a local folder, trained once per content key under cache_root (default
    ~/.cache/amnesia/models; ~3 min on 2 cores): what the benchmarks trace and unlearn without a stack."""
    import os
    import shutil

    cfg = cfg or DemoConfig()
    root = Path(cache_root or Path.home() / ".cache" / "amnesia" / "models")
    folder = root / f"demo-{content_key(cfg)}"
    if (folder / "model.safetensors").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        echo(f"training the demo base model once into {folder} …")
        train_base_model(generate(cfg.world), cfg.train, tmp, log=echo)
        os.replace(tmp, folder)  # whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
