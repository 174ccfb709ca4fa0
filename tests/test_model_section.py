"""One `model:` section for every stage: how it resolves on this machine, how configs spell it, and that
trace, unlearn and evaluate each run the model where and in the dtype it says (CPU: fp32 and bf16; the
CUDA branch when a GPU is present). The placement tests need no stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from amnesia.core.config import ModelConfig, parse_model
from amnesia.core.errors import ConfigError
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.storage.models import ModelLoadError, load, placement

GPU = torch.cuda.is_available()


def test_auto_resolves_for_this_machine() -> None:
    infer, train = placement(ModelConfig(uri="x")), placement(ModelConfig(uri="x"), training=True)
    if GPU:
        assert infer.device.startswith("cuda:") and train.device == infer.device
        assert infer.dtype == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    else:
        assert (infer.device, infer.dtype) == ("cpu", "fp32")
    assert train.dtype == "fp32"  # master weights; unlearn.precision adds bf16 autocast


def test_explicit_settings_are_honoured_and_device_map_is_for_inference() -> None:
    cfg = ModelConfig(uri="x", dtype="bf16", device="cpu", device_map="auto")
    assert placement(cfg).dtype == placement(cfg, training=True).dtype == "bf16"
    assert placement(cfg).device == "cpu" and placement(cfg).device_map is None  # no GPUs to spread over
    if GPU:
        gpu = ModelConfig(uri="x", device="cuda", device_map="auto")
        assert placement(gpu).device_map == "auto" and placement(gpu, training=True).device_map is None


@pytest.mark.skipif(GPU, reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error() -> None:
    with pytest.raises(ModelLoadError, match=r"model\.device is 'cuda:1' but this machine has no CUDA GPU"):
        placement(ModelConfig(uri="x", device="cuda:1"))


def test_configs_spell_it_as_a_uri_or_a_section() -> None:
    from amnesia.runtime.pipeline_config import PipelineConfig

    base = {"split": {"forget": "f.jsonl", "retain": "r.jsonl"}}
    assert PipelineConfig.model_validate(base | {"model": "s3://b/m"}).model.uri == "s3://b/m"
    full = PipelineConfig.model_validate(base | {"model": {"uri": "/m", "dtype": "bf16", "trust_remote_code": True}})
    assert (full.model.dtype, full.model.trust_remote_code) == ("bf16", True)
    args = full.arguments("run-1", "s3://b")
    assert args["model_uri"] == "/m" and ModelConfig.model_validate_json(args["model_config"]).dtype == "bf16"
    with pytest.raises(ConfigError, match=r"run\.yaml: model: uri: the base model is required"):
        parse_model(PipelineConfig, base | {"model": {"dtype": "fp32"}}, "run.yaml")
    with pytest.raises(ConfigError, match=r"run\.yaml: model\.dtype: Input should be 'auto', 'bf16'"):
        parse_model(PipelineConfig, base | {"model": {"uri": "/m", "dtype": "int3"}}, "run.yaml")
    with pytest.raises(ConfigError, match=r"'device' moved to the run config's model\.device"):
        parse_model(UnlearnConfig, {"device": "cuda"}, "run.yaml: unlearn")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_load_places_the_model(tiny_model_dir: Path, dtype: str) -> None:
    loaded, where = load(ModelConfig(uri=str(tiny_model_dir), dtype=dtype, device="cpu", attn_implementation="eager"))
    param = next(loaded.model.parameters())
    assert param.device.type == "cpu" and param.dtype == where.torch_dtype
    assert loaded.model.config._attn_implementation == "eager"
    assert where.params(ModelConfig(uri="x", dtype=dtype))["model.dtype"] == dtype


def test_a_missing_uri_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.uri: no model given"):
        load(ModelConfig())


STAGE_DEVICES = ["cpu"] + (["cuda"] if GPU else [])


@pytest.mark.parametrize("device", STAGE_DEVICES)
def test_trace_unlearn_and_evaluate_run_where_the_section_says(
    demo_build, store, stack_settings, s3_prefix: str, tmp_path: Path, device: str
) -> None:  # type: ignore[no-untyped-def]
    """Each stage loads the demo model as `model:` says (bf16 here, fp32 would be the CPU default) and
    records it; unlearning in bf16 stores a bf16 candidate; a bf16 evaluation is not a cached fp32 one."""
    from mlflow import MlflowClient
    from safetensors import safe_open

    from amnesia.demo.prepare import demo_split_config
    from amnesia.stages.evaluate.config import EvaluateConfig, MMLUConfig
    from amnesia.stages.evaluate.stage import run_evaluate
    from amnesia.stages.split.stage import run_split
    from amnesia.stages.trace.config import TraceConfig
    from amnesia.stages.trace.stage import run_trace
    from amnesia.stages.unlearn.stage import run_unlearn
    from amnesia.storage.context import RunContext
    from amnesia.storage.lineage import Lineage, Tag
    from amnesia.storage.requests import RequestQueue, load_requests_uri
    from amnesia.storage.uri import join

    RequestQueue(store, s3_prefix).submit(load_requests_uri(store, join(demo_build.world_uri, "requests.jsonl"))[:1])
    split = run_split(demo_split_config(demo_build.world_uri), RunContext("p", f"{s3_prefix}/runs/p", store))
    run_id = f"placement-{device}-{s3_prefix.rsplit('-', 1)[1]}"
    ctx = RunContext(run_id, f"{s3_prefix}/runs/{run_id}", store, Lineage(run_id, settings=stack_settings))
    model = ModelConfig(uri=demo_build.model_uri, dtype="bf16", device=device)

    # Two facts cannot show a layer above noise (the stage says so): the fallback keeps this test on placement.
    trace_cfg = TraceConfig(window=2, k=2, max_facts=2, samples=2, min_drop=0.0, fallback_layers=[0, 1])
    traced = run_trace(trace_cfg, ctx, model, split)
    unlearned = run_unlearn(UnlearnConfig(max_steps=1, batch_size=4, early_stop_forget_exact=None, eval_every=1),
                            ctx, model, split, traced.layers)  # fmt: skip
    cfg = EvaluateConfig(  # no attacks: this is a test of placement (tests/test_attacks.py runs them)
        max_new_tokens=8, mia=False, mmlu=MMLUConfig(uri=join(demo_build.world_uri, "utility"), shots=0), attacks=None
    )
    bf16 = run_evaluate(cfg, ctx, model, split, "base")
    fp32 = run_evaluate(cfg, ctx, model.model_copy(update={"dtype": "fp32"}), split, "base")

    expected = {"model.dtype": "bf16", "model.device": placement(model).device}
    client = MlflowClient(stack_settings.mlflow_tracking_uri)
    stages = {r.data.tags[Tag.STAGE]: r for r in client.search_runs(
        [client.get_experiment_by_name(stack_settings.experiment).experiment_id],
        f"tags.`{Tag.PIPELINE_RUN_ID}` = '{run_id}'")  if Tag.STAGE in r.data.tags}  # fmt: skip
    for stage in ("trace", "unlearn", "evaluate-base"):
        assert {k: stages[stage].data.params[k] for k in expected} == expected, stage
    local = store.fetch_dir(unlearned.uri, tmp_path / "cand")
    with safe_open(str(next(local.glob("*.safetensors"))), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 (not a dict)
    assert bf16.placement["model.dtype"] == "bf16" and fp32.placement["model.dtype"] == "fp32"
    assert bf16.key != fp32.key and not fp32.cached
