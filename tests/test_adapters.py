"""unlearn.adapter (LoRA, peft): only the adapters train, the model's outputs do not change when they are put on,
the candidate is saved merged (an ordinary model with the base's tensor names, loadable without peft), and a
run is reproducible. Two processes against one: tests/test_distributed.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from amnesia.core.config import load_run_config
from amnesia.demo.prepare import DemoArtifacts
from amnesia.science.unlearning.adapters import has_adapters, merge_lora
from amnesia.science.unlearning.params import SelectionError
from amnesia.stages.unlearn.config import AdapterConfig, UnlearnConfig
from amnesia.stages.unlearn.stage import run_unlearn, select_trainable
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.context import RunContext
from amnesia.storage.models import load_model
from tests.test_unlearn import _split

LORA = {"kind": "lora", "rank": 4, "alpha": 8.0}


def test_adapters_train_alone_start_silent_and_merge_into_the_same_model(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir)).model.eval()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    base_logits = model(ids).logits

    cfg = UnlearnConfig(layers=[1], adapter=AdapterConfig(**LORA))
    names = select_trainable(model, cfg, [1])
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names) and all("layers.1.mlp" in n for n in names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)
    # three Linear modules in the MLP (gate, up, down), A and B each: r·(in + out) numbers per module
    sizes = {n: p.numel() for n, p in model.named_parameters() if n in names}
    assert len(names) == 6 and sum(sizes.values()) == 4 * ((32 + 64) * 2 + (64 + 32))
    torch.testing.assert_close(model(ids).logits, base_logits, rtol=0, atol=0)  # B starts at zero

    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if n in names], lr=1e-2)
    for _ in range(5):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    adapted = model(ids).logits.detach()
    assert not torch.allclose(adapted, base_logits)  # it trained

    assert merge_lora(model) == 3 and not has_adapters(model)
    after = model.state_dict()
    assert set(after) == set(before)  # the base's tensor names, no adapter left
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {f"model.layers.1.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    assert all(type(model.get_submodule(n.removesuffix(".weight"))) is torch.nn.Linear for n in changed)
    torch.testing.assert_close(model(ids).logits, adapted, rtol=1e-5, atol=1e-5)  # merged = adapted


def test_adapter_settings_are_checked(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = load_model(str(tiny_model_dir)).model
    with pytest.raises(SelectionError, match="no Linear module named q_proj"):
        select_trainable(model, UnlearnConfig(layers=[0], adapter=AdapterConfig(modules=["q_proj"])), [0])
    bad = tmp_path / "run.yaml"
    bad.write_text("adapter: {kind: lora, rank: 0}\n")  # the unlearn section, as `amnesia unlearn` reads it
    with pytest.raises(Exception, match=r"run\.yaml: adapter\.rank: .*greater than or equal to 1"):
        load_run_config(bad, UnlearnConfig)


def test_the_stage_saves_the_adapters_merged_and_reproducibly(
    demo_build: DemoArtifacts, store: ArtifactStore, s3_prefix: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    split = _split(store, demo_build, s3_prefix, n=2)
    cfg = UnlearnConfig(
        layers=[0, 1], batch_size=4, max_steps=6, eval_every=3, early_stop_forget_exact=None, keep="last",
        lr=3e-3, adapter=AdapterConfig(**LORA | {"modules": ["down_proj", "up_proj"]}),
    )  # fmt: skip
    runs = [run_unlearn(cfg, RunContext(f"a{i}", f"{s3_prefix}/runs/a{i}", store), str(tiny_model_dir), split)
            for i in (1, 2)]  # fmt: skip
    first = runs[0]
    assert first.digest == runs[1].digest  # same inputs, same seed (the adapters' start too): same candidate
    assert first.trainable_params == 2 * 4 * ((32 + 64) + (64 + 32)) and first.steps == 6
    summary = store.get_json(f"{first.report_uri}/summary.json")
    assert summary["adapter"]["rank"] == 4 and all(".lora_" in n for n in summary["trainable_tensors"])

    base = load_file(tiny_model_dir / "model.safetensors")
    saved = load_file(store.fetch_dir(first.uri, tmp_path / "c") / "model.safetensors")
    assert set(saved) == set(base)  # an ordinary model: no adapter tensors, the base's names
    changed = sorted(k for k in base if not torch.equal(base[k], saved[k]))
    assert changed == [f"model.layers.{i}.mlp.{m}.weight" for i in (0, 1) for m in ("down_proj", "up_proj")]
    loaded = load_model(first.uri, store=store)
    assert not has_adapters(loaded.model)
