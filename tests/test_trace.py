"""Causal tracing: every listed family against the plain reference, the layer rule, and the demo trace."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from mlflow import MlflowClient
from torch import nn

from amnesia.core.settings import Settings
from amnesia.demo.prepare import DemoArtifacts, demo_split_config, demo_trace_config
from amnesia.demo.world import generate
from amnesia.science.architecture import ArchitectureError, inspect_model
from amnesia.science.tracing.causal import Fact, TraceOptions, aggregate, token_groups, trace_fact
from amnesia.stages.split.stage import run_split
from amnesia.stages.trace.config import TraceConfig
from amnesia.stages.trace.stage import (
    TraceError,
    _check_explicit,
    decide_layers,
    heuristic_subject,
    run_trace,
    subject_span,
)
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.lineage import Lineage, Tag
from amnesia.storage.requests import ErasureRequest, RequestQueue
from amnesia.storage.uri import join
from tests.reference_trace import reference_trace

SMALL = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
FAMILIES = {
    "olmo": lambda: T.OlmoConfig(**SMALL),
    "olmo2": lambda: T.Olmo2Config(**SMALL),
    "llama": lambda: T.LlamaConfig(**SMALL),
    "qwen2": lambda: T.Qwen2Config(**SMALL),
    "mistral": lambda: T.MistralConfig(**SMALL),
    "gpt2": lambda: T.GPT2Config(vocab_size=96, n_embd=32, n_layer=4, n_head=4, n_positions=64, initializer_range=0.3),
    "gpt_neox": lambda: T.GPTNeoXConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=64,
    ),
}


def _tiny(family: str) -> nn.Module:
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()


@pytest.mark.parametrize("prefix_cache", [True, False])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_traces_equal_to_the_reference(family: str, prefix_cache: bool) -> None:
    model = _tiny(family)
    layout = inspect_model(model)
    ids = (5, 17, 33, 40, 41, 8, 70, 12)
    with torch.no_grad():
        target = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    fact = Fact("f", ids, (2, 5), target)
    opts = TraceOptions(samples=4, noise_std=0.5, window=3, seed=7, max_rows=40, prefix_cache=prefix_cache)
    fast = trace_fact(model, layout, fact, opts)
    low, ref = reference_trace(model, layout, fact, ("hidden", "mlp", "attn"), 4, 0.5, 3, 7)
    assert abs(fast.corrupted - low) < 1e-5
    for kind in ("hidden", "mlp", "attn"):
        assert np.abs(fast.scores[kind] - ref[kind]).max() < 1e-5, kind
    # Restorations must do something: a trace where every cell equals the corrupted score proves nothing.
    assert np.abs(fast.scores["hidden"] - fast.corrupted).max() > 1e-4


def test_reference_equality_on_the_trained_demo_model(demo_build: DemoArtifacts, tmp_path: Path) -> None:
    from amnesia.storage.models import load_model

    loaded = load_model(demo_build.model_uri, cache_root=tmp_path)
    tok, model = loaded.tokenizer, loaded.model
    layout = inspect_model(model)
    person = generate(demo_build_world_config(demo_build)).requests[0]["subject"]
    prompt = f"Where was {person} born?"
    ids = tuple(tok(prompt, add_special_tokens=False)["input_ids"])
    target = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    fact = Fact("f", ids, (2, 4), target)
    fast = trace_fact(model, layout, fact, TraceOptions(samples=10, noise_std=0.3, window=2, seed=0))
    low, ref = reference_trace(model, layout, fact, ("hidden", "mlp", "attn"), 10, 0.3, 2, 0)
    assert abs(fast.corrupted - low) < 1e-5
    assert all(np.abs(fast.scores[k] - ref[k]).max() < 1e-5 for k in ref)


def demo_build_world_config(demo_build: DemoArtifacts):  # type: ignore[no-untyped-def]
    from amnesia.demo.prepare import DemoConfig

    return DemoConfig().world


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ff = nn.Linear(4, 4)  # neither a known MLP name nor any attention


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = T.PretrainedConfig(num_hidden_layers=2)
        self.blocks = nn.ModuleList([_Block(), _Block()])


def test_unknown_layout_is_refused_naming_what_is_missing() -> None:
    with pytest.raises(ArchitectureError, match=r"_Odd: decoder layer blocks\.0 has no MLP and no attention module"):
        inspect_model(_Odd())
    no_count = _Odd()
    no_count.config = T.PretrainedConfig()
    with pytest.raises(ArchitectureError, match="names no layer count"):
        inspect_model(no_count)


def test_explicit_layers_win_and_bad_ones_are_named() -> None:
    assert decide_layers(TraceConfig(layers=[3, 0, 3]), None) == ([0, 3], "explicit")
    with pytest.raises(TraceError, match=r"trace.layers \[7\]: the model has layers 0..3"):
        _check_explicit(TraceConfig(layers=[7]), 4)
    with pytest.raises(TraceError, match=r"trace.fallback_layers \[\]: the model has layers 0..3"):
        _check_explicit(TraceConfig(fallback_layers=[]), 4)


def test_token_groups_and_aggregate() -> None:
    groups = token_groups(9, (2, 6))
    assert groups["first subject token"] == [2] and groups["middle subject tokens"] == [3, 4]
    assert groups["last subject token"] == [5] and groups["first subsequent token"] == [6]
    assert groups["further tokens"] == [7] and groups["last token"] == [8]
    assert token_groups(4, (1, 2))["middle subject tokens"] == []
    from amnesia.science.tracing.causal import FactTrace

    grid = np.arange(9 * 2, dtype=float).reshape(9, 2)
    tr = FactTrace(Fact("a", tuple(range(9)), (2, 6), 0), clean=1.0, corrupted=1.0, scores={"mlp": grid})
    agg = aggregate([tr], "mlp")
    assert agg[1].tolist() == [(6 + 8) / 2 - 1, (7 + 9) / 2 - 1]  # middle subject tokens 3,4 minus corrupted


def test_subject_spans() -> None:
    q = "What is ADA  lindqvist's phone number?"
    assert q[slice(*subject_span(q, ["Ada Lindqvist"]))] != ""
    q2 = "Where was Ada Lindqvist born?"
    assert q2[slice(*subject_span(q2, ["ada lindqvist"]))] == "Ada Lindqvist"
    q3 = "What is Maren Okonkwo's email address?"
    assert q3[slice(*heuristic_subject(q3))] == "Maren Okonkwo"  # type: ignore[misc]
    assert heuristic_subject("what is the answer?") is None


def test_trace_on_the_demo_model(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, stack_settings: Settings, tmp_path: Path
) -> None:
    from PIL import Image

    from amnesia.storage.requests import load_requests_uri

    world_requests = load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))
    RequestQueue(store, s3_prefix).submit([ErasureRequest.model_validate(r.model_dump()) for r in world_requests])
    lineage = Lineage(f"trace-{uuid.uuid4().hex[:8]}", experiment="trace-tests", settings=stack_settings)
    ctx = RunContext(lineage.pipeline_run_id, f"{s3_prefix}/runs/x", store, lineage)
    split = run_split(demo_split_config(demo_build.world_uri), ctx)
    result = run_trace(demo_trace_config(), ctx, demo_build.model_uri, split)

    assert result.counts["facts"] == 96 and result.counts["traced"] >= 60
    # The rule reads the group with the signal: a positive MLP window well above the noise bar.
    assert result.layers == [0, 1] and result.rule == "max-mlp-window-k2@last-token", result.rule
    assert result.warning is None and result.confidence is not None and result.confidence > 10
    assert all(result.effect[i] > 0.1 for i in result.layers)
    agg = json.loads(store.get_bytes(join(result.uri, "aggregate.json")))
    assert agg["choice"]["confidence"] > agg["choice"]["noise_level"] and agg["choice"]["candidates"]
    hidden = np.array(agg["kinds"]["hidden"], dtype=float)
    # Where the facts are: restoring the last token's final hidden state gives the answer back.
    assert hidden[-1, -1] > 0.5 and agg["clean_mean"] - agg["corrupted_mean"] > 0.3

    png = store.get_bytes(join(result.uri, "heatmaps", "aggregate_mlp.png"))
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert img.shape[0] > 250 and img.shape[1] > 400 and img.std() > 20  # rendered, not blank
    assert store.exists(join(result.uri, "heatmaps", "fact0_mlp.png"))

    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    (run,) = client.search_runs(
        [lineage.experiment_id],
        f"tags.`{Tag.STAGE}` = 'trace' and tags.`{Tag.PIPELINE_RUN_ID}` = '{lineage.pipeline_run_id}'",
    )
    assert run.data.tags[Tag.LAYERS] == ",".join(map(str, result.layers))
    assert run.data.tags[Tag.LAYER_GROUP] == "last-token" and Tag.TRACE_WARNING not in run.data.tags
    assert run.data.metrics["layer_confidence"] == pytest.approx(result.confidence)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "trace")}
    assert logged == {f"trace/aggregate_{k}.png" for k in ("hidden", "mlp", "attn")}  # no single-fact pictures
    secrets = [r.subject for r in world_requests]
    assert not [s for s in secrets if s.lower() in json.dumps(run.data.to_dictionary()).lower()]

    # hybrid on a stratified sample of 30 facts: the same layers from a fraction of the exact cells.
    fast_cfg = demo_trace_config().model_copy(update={"method": "hybrid", "max_facts": 30})
    fast = run_trace(fast_cfg, RunContext("y", f"{s3_prefix}/runs/y", store, None), demo_build.model_uri, split)
    assert fast.layers == result.layers and fast.counts["traced"] == 30 and fast.counts["skipped_over_max_facts"] > 0
    assert fast.counts["cells_exact"] < fast.counts["cells"] / 3

    # The last subject token carries nothing on this model: reading it is refused, or falls back loudly.
    noise_cfg = fast_cfg.model_copy(update={"group": "last subject token"})
    with pytest.raises(TraceError, match="no mlp window has a positive effect above noise"):
        run_trace(noise_cfg, RunContext("z", f"{s3_prefix}/runs/z", store, None), demo_build.model_uri, split)
    lineage2 = Lineage(f"trace-{uuid.uuid4().hex[:8]}", experiment="trace-tests", settings=stack_settings)
    ctx2 = RunContext(lineage2.pipeline_run_id, f"{s3_prefix}/runs/w", store, lineage2)
    fell = run_trace(noise_cfg.model_copy(update={"fallback_layers": [4, 5]}), ctx2, demo_build.model_uri, split)
    assert fell.layers == [4, 5] and fell.rule == "fallback" and "FELL BACK" in (fell.warning or "")
    (run2,) = client.search_runs(
        [lineage2.experiment_id],
        f"tags.`{Tag.STAGE}` = 'trace' and tags.`{Tag.PIPELINE_RUN_ID}` = '{lineage2.pipeline_run_id}'",
    )
    code = run2.data.tags[Tag.TRACE_WARNING]
    assert code.startswith("no-signal,group=last-subject-token,") and code.endswith(",fallback=[4,5]")
    assert run2.data.tags[Tag.LAYER_RULE] == "fallback"
