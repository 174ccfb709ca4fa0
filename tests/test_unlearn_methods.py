"""Each registered method on a tiny model: its loss is the formula it documents, one step moves that
loss the way the formula says, and only the trainable parameters (and their optimizer state) change."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from amnesia.science.architecture import inspect_model
from amnesia.science.records import UnlearningRecord
from amnesia.science.unlearning.data import Batch, ChunkedBatches, DataError, PairedBatches, chunks, collate, encode
from amnesia.science.unlearning.methods import METHODS, Micro, StepInfo, method_class, method_names
from amnesia.science.unlearning.methods.rmu import hidden_at
from amnesia.science.unlearning.params import freeze_all_but, trainable_names
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.stages.unlearn.stage import _frozen_copy
from amnesia.stages.unlearn.trainer import HeldOut, Trainer
from amnesia.storage.models import load_model

FORGET = [("Ada Quill was born in", "Porto."), ("What is Ada Quill's phone?", "555-0101")]
RETAIN = [("Bo Reyes was born in", "Lima."), ("What is Bo Reyes's phone?", "555-0199")]
LAYERS = [1]


def _records(pairs: list[tuple[str, str]], doc: str) -> list[UnlearningRecord]:
    return [UnlearningRecord(id=f"{doc}qa{i}", input=i_, output=o, task="t") for i, (i_, o) in enumerate(pairs)]


@pytest.fixture
def setup(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    loaded = load_model(str(tiny_model_dir))
    model, tok = loaded.model, loaded.tokenizer
    torch.manual_seed(0)
    names = trainable_names(model, inspect_model(model), "mlp", LAYERS)
    params = freeze_all_but(model, names)
    forget = [encode(tok, r) for r in _records(FORGET, "f")]
    retain = [encode(tok, r) for r in _records(RETAIN, "r")]
    return (
        model,
        tok,
        names,
        params,
        collate(forget, tok.pad_token_id),
        collate(retain, tok.pad_token_id),
        forget,
        retain,
    )


def _method(name: str, model, params, **args):  # type: ignore[no-untyped-def]
    cls = method_class(name)
    cfg = cls.config_cls(**args)
    ref = _frozen_copy(model) if cls.wants_reference(cfg) else None
    return cls(cfg, model, params, reference=ref, layers=LAYERS)


def _ce(model, batch: Batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """transformers' own loss: the reference the methods' NLL must equal."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss


def _flat_grad(loss: torch.Tensor, params) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The reference gradient: autograd's, flattened (the methods keep theirs per parameter)."""
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


def _seq_logp(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Per item, independently: sum of log p over its output tokens (one item at a time)."""
    out, lens = [], []
    for i in range(batch.size):
        n = int(batch.attention_mask[i].sum())
        ids, labels = batch.input_ids[i : i + 1, :n], batch.labels[i : i + 1, :n]
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        keep = labels[0, 1:] != -100
        out.append(logp[keep].gather(-1, labels[0, 1:][keep].unsqueeze(-1)).sum())
        lens.append(keep.sum())
    return torch.stack(out), torch.stack(lens)


def _sgd_step(method, forget: Batch, retain: Batch, lr: float) -> None:  # type: ignore[no-untyped-def]
    for p in method.trainable:
        p.grad = None
    method.backward([Micro(forget, retain)], StepInfo(step=0, epoch=0, lr=lr))
    if not method.owns_update:
        with torch.no_grad():
            for p in method.trainable:
                p -= lr * p.grad


def _objective(method, forget: Batch, retain: Batch, epoch: int = 0) -> float:  # type: ignore[no-untyped-def]
    return float(method.eval_loss(forget, retain, StepInfo(step=0, epoch=epoch, lr=0.0)).total)


INFO = StepInfo(step=0, epoch=0, lr=1e-3)


def test_registry_lists_every_method() -> None:
    assert set(METHODS) == {
        "sha256", "grad_ascent", "grad_diff", "npo", "simnpo", "rmu", "ngdiff", "blur", "chunked", "surgery", "undo"
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown method 'nope'; registered: blur"):
        method_class("nope")
    # SAM wraps the separable methods, not the gradient-surgery ones (nor itself)
    assert {"sam+sha256", "sam+npo", "sam+chunked"} <= set(method_names())
    assert not {n for n in method_names() if n in ("sam+ngdiff", "sam+blur")}
    with pytest.raises(ValueError, match="sam wraps methods whose loss is a forget part plus a retain part; ngdiff"):
        method_class("sam+ngdiff")
    with pytest.raises(ValueError, match="unknown method 'sam\\+sam\\+npo'"):
        method_class("sam+sam+npo")
    assert method_class("sam+npo") is method_class("sam+npo")
    cfg = UnlearnConfig(method="sam+npo", method_args={"rho": 0.05, "beta": 0.2})
    assert (cfg.method_config().rho, cfg.method_config().beta) == (0.05, 0.2)


def test_method_args_are_validated_by_the_methods_config() -> None:
    from amnesia.core.config import ConfigError, parse_model

    with pytest.raises(ConfigError, match=r"unlearn: method_args: beta: Input should be greater than 0"):
        parse_model(UnlearnConfig, {"method": "npo", "method_args": {"beta": 0}}, "unlearn")
    with pytest.raises(ConfigError, match=r"method_args: bogus: Extra inputs are not permitted"):
        parse_model(UnlearnConfig, {"method_args": {"bogus": 1}}, "unlearn")
    with pytest.raises(ConfigError, match="unknown method 'rome'"):
        parse_model(UnlearnConfig, {"method": "rome"}, "unlearn")


def test_sha256_loss_and_adaptive_weight(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("sha256", model, params)
    out = m.loss(fb, rb, INFO)
    ce_f, ce_r = _ce(model, fb), _ce(model, rb)
    assert out.logs["m"] == 1.2  # m_min during the first epoch
    assert float(out.total) == pytest.approx(float(-ce_f + 1.2 * ce_r), rel=1e-5)
    # The baseline is the first epoch's mean retain loss; afterwards m = clip(0.3 * 6**dL + 0.8, 1.2, 2.8).
    for value in (1.0, 2.0):
        m.after_step({"retain_loss": value}, INFO)
    epoch1 = StepInfo(step=2, epoch=1, lr=1e-3)
    assert m.weight(1.5 + 0.5, epoch1) == pytest.approx(0.3 * 6**0.5 + 0.8)
    assert m.weight(1.5 - 1.0, epoch1) == 1.2 and m.weight(1.5 + 3.0, epoch1) == 2.8
    assert m.state_dict() == {"baseline": 1.5, "sum": 3.0, "n": 2}
    before = _objective(m, fb, rb)
    _sgd_step(m, fb, rb, 1e-2)
    assert _objective(m, fb, rb) < before


def test_grad_ascent_raises_forget_loss(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("grad_ascent", model, params)
    before = float(_ce(model, fb))
    assert float(m.loss(fb, rb, INFO).total) == pytest.approx(-before, rel=1e-5)
    _sgd_step(m, fb, rb, 1e-2)
    assert float(_ce(model, fb)) > before


@pytest.mark.parametrize("retain_loss", ["nll", "kl"])
def test_grad_diff(setup, retain_loss: str) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("grad_diff", model, params, gamma=0.5, alpha=2.0, retain_loss=retain_loss)
    ce_f, ce_r = float(_ce(model, fb)), float(_ce(model, rb))
    retain_term = ce_r if retain_loss == "nll" else 0.0  # KL to itself is 0 before any step
    assert float(m.loss(fb, rb, INFO).total) == pytest.approx(-0.5 * ce_f + 2.0 * retain_term, rel=1e-5, abs=1e-6)
    before = _objective(m, fb, rb)
    _sgd_step(m, fb, rb, 1e-2)
    assert _objective(m, fb, rb) < before
    if retain_loss == "kl":
        # The step moved the retain outputs: KL(base || model) > 0, computed independently in float64 (a
        # one-step KL is far below float32's rounding of log-probs, where the sum can come out at -1e-8).
        with torch.no_grad():
            p = torch.log_softmax(
                m.reference(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits[:, :-1].double(), -1
            )
            q = torch.log_softmax(
                model(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits[:, :-1].double(), -1
            )
        mask = rb.labels[:, 1:] != -100
        kl64 = float(((p.exp() * (p - q)).sum(-1) * mask).sum() / mask.sum())
        assert kl64 > 0
        assert float(m.loss(fb, rb, INFO).logs["retain_loss"]) == pytest.approx(kl64, abs=1e-6)


def test_npo_starts_at_two_over_beta_log_two(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("npo", model, params, beta=0.1, alpha=0.0)
    # With the model equal to its reference, log-ratio 0: -(2/beta) log sigmoid(0) = (2/beta) log 2.
    assert float(m.loss(fb, rb, INFO).total) == pytest.approx(20 * math.log(2), rel=1e-5)
    before = _objective(m, fb, rb)
    logp_before, _ = _seq_logp(model, fb)
    _sgd_step(m, fb, rb, 1e-2)
    assert _objective(m, fb, rb) < before
    assert (_seq_logp(model, fb)[0] < logp_before).all()


def test_simnpo_formula(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("simnpo", model, params, beta=2.5, delta=0.5, gamma=1.0, alpha=1.5)
    logp, length = _seq_logp(model, fb)
    expected = -(2 / 2.5) * F.logsigmoid(-(2.5 / length) * logp - 0.5).mean() + 1.5 * _ce(model, rb)
    assert float(m.loss(fb, rb, INFO).total) == pytest.approx(float(expected), rel=1e-4)
    before = _objective(m, fb, rb)
    _sgd_step(m, fb, rb, 1e-2)
    assert _objective(m, fb, rb) < before


def test_rmu_steers_forget_activations_and_holds_retain(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("rmu", model, params, alpha=10.0, coef_scale=2.0)
    out = m.loss(fb, rb, INFO)
    h = hidden_at(model, fb, 1)
    real = fb.attention_mask.bool()
    coef = 2.0 * float(h.norm(dim=-1)[real].mean())
    assert m.coef == pytest.approx(coef, rel=1e-5)
    expected = ((h - coef * m.u) ** 2)[real].mean()  # retain term is 0: the model is its reference
    assert float(out.total) == pytest.approx(float(expected), rel=1e-5)
    assert out.logs["retain_loss"] == pytest.approx(0.0, abs=1e-10)
    before = _objective(m, fb, rb)
    _sgd_step(m, fb, rb, 1e-3)
    assert _objective(m, fb, rb) < before
    assert m.state_dict() == {"coef": m.coef}


def test_ngdiff_normalised_direction_and_automatic_step(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("ngdiff", model, params, max_lr_factor=10.0)
    g_f, g_r = _flat_grad(_ce(model, fb), params), _flat_grad(_ce(model, rb), params)
    d, _, _ = m.direction([Micro(fb, rb)])
    torch.testing.assert_close(torch.cat([x.flatten() for x in d]), g_r / g_r.norm() - g_f / g_f.norm())
    before_obj = float(_ce(model, rb) - _ce(model, fb))
    logs = m.backward([Micro(fb, rb)], StepInfo(step=0, epoch=0, lr=1e-3))
    assert 0 < logs["eta"] <= 1e-2 and logs["loss"] == pytest.approx(before_obj, rel=1e-4)
    assert float(_ce(model, rb) - _ce(model, fb)) < before_obj


def test_blur_projects_retain_gradient_off_the_forget_gradient(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("blur", model, params, gamma=0.7)
    g_f, g_r = _flat_grad(-_ce(model, fb), params), _flat_grad(_ce(model, rb), params)
    m.backward([Micro(fb, rb)], INFO)
    d = torch.cat([p.grad.flatten() for p in params])
    torch.testing.assert_close(d, g_r - (g_r @ g_f) / (g_f @ g_f) * g_f + 0.7 * g_f)
    assert float((d - 0.7 * g_f) @ g_f) == pytest.approx(0.0, abs=1e-6 * float(g_f.norm() * g_r.norm()))
    ce_f = float(_ce(model, fb))
    with torch.no_grad():
        for p in params:
            p -= 1e-2 * p.grad
    assert float(_ce(model, fb)) > ce_f  # the forget objective -CE_F went down


def test_chunked_schedule_runs_each_chunk_in_turn_with_cycled_retain(setup) -> None:  # type: ignore[no-untyped-def]
    _, tok, _, _, _, _, _, retain = setup
    items = [encode(tok, UnlearningRecord(id=f"f{i}qa0", input=f"Q{i}?", output=f"A{i}", task="t")) for i in range(10)]
    plain = PairedBatches(items, retain, 2, 0, tok.pad_token_id)
    method = method_class("chunked")
    data = method.schedule(method.config_cls(chunks=3, retain_ratio=3), plain, epochs=2)
    assert isinstance(data, ChunkedBatches)
    sizes = [len(p) for p in data.parts]
    assert sorted(sizes) == [3, 3, 4] and sorted(e.id for p in data.parts for e in p) == sorted(e.id for e in items)
    assert data.batches_per_epoch == 6  # 2 + 2 + 2 batches of at most 2
    seen = [{e.id for e in data.forget_items(i)} for i in range(data.batches_per_epoch * 2)]
    for c, part in enumerate(data.parts):  # chunk c fills indices [4c, 4c + 4): both passes, then the next
        ids = {e.id for e in part}
        assert set().union(*seen[4 * c : 4 * c + 2]) == ids and set().union(*seen[4 * c + 2 : 4 * c + 4]) == ids
    forget_batch, retain_batch = data.micro_batch(0)
    assert retain_batch.size == 6  # retain_ratio x batch_size, cycled
    assert data.micro_batch(5)[0].input_ids.tolist() == data.micro_batch(5)[0].input_ids.tolist()
    with pytest.raises(DataError, match="chunked: retain batch = method_args.retain_ratio x batch_size"):
        method.schedule(method.config_cls(), PairedBatches(items, retain, 2, 0, tok.pad_token_id, 4), 1)


def test_chunked_loss_is_grad_diff(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("chunked", model, params, gamma=0.5, alpha=2.0)
    out = m.loss(fb, rb, INFO)
    assert float(out.total) == pytest.approx(float(-0.5 * _ce(model, fb) + 2.0 * _ce(model, rb)), rel=1e-5)
    assert out.logs["forget_loss"] == pytest.approx(float(_ce(model, fb)), rel=1e-5)


def test_llm_surgery_three_terms(setup, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok, _, params, fb, rb, _, _ = setup
    update = collate([encode(tok, r) for r in _records([("Ada Quill was born in", "Oslo.")], "u")], tok.pad_token_id)
    m = _method("surgery", model, params, forget_weight=0.5, update_weight=2.0, retain_weight=3.0)
    # Before a step the model is its reference: KL 0, so the loss is the ascent and update terms alone.
    out = m.micro_loss(Micro(fb, rb, extra={"update": update}), INFO)
    assert float(out.total) == pytest.approx(float(-0.5 * _ce(model, fb) + 2.0 * _ce(model, update)), rel=1e-5)
    assert out.logs["retain_loss"] == pytest.approx(0.0, abs=1e-7)
    assert float(m.loss(fb, rb, INFO).total) == pytest.approx(float(-0.5 * _ce(model, fb)), rel=1e-5)  # no update set
    ce_f, ce_u = float(_ce(model, fb)), float(_ce(model, update))
    for p in params:
        p.grad = None
    m.backward([Micro(fb, rb, extra={"update": update})], INFO)
    with torch.no_grad():
        for p in params:
            p -= 1e-2 * p.grad
    assert float(_ce(model, fb)) > ce_f and float(_ce(model, update)) < ce_u
    with torch.no_grad():  # the step moved the retain outputs off the base's: the KL term now has work to do
        moved = model(input_ids=rb.input_ids).logits - m.reference(input_ids=rb.input_ids).logits
    assert float(moved.abs().max()) > 0


def test_sam_gradient_is_forget_at_the_perturbed_weights_plus_retain_here(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("sam+grad_diff", model, params, gamma=0.5, alpha=2.0, rho=0.05)
    theta = [p.detach().clone() for p in params]
    g_f = _flat_grad(-0.5 * _ce(model, fb), params)
    eps = 0.05 * g_f / g_f.norm()
    with torch.no_grad():
        offset = 0
        for p in params:
            p += eps[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
    g_f_perturbed = _flat_grad(-0.5 * _ce(model, fb), params)
    with torch.no_grad():
        for p, t in zip(params, theta, strict=True):
            p.copy_(t)
    g_r = _flat_grad(2.0 * _ce(model, rb), params)
    logs = m.backward([Micro(fb, rb)], INFO)
    got = torch.cat([p.grad.flatten() for p in params])
    torch.testing.assert_close(got, g_f_perturbed + g_r, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, g_f + g_r, rtol=1e-3, atol=1e-6)  # the perturbation changed the step
    for p, t in zip(params, theta, strict=True):
        assert torch.equal(p.detach(), t)  # the weights are back where they were
    assert logs["sam_grad_norm"] == pytest.approx(float(g_f.norm()), rel=1e-4)
    # The objective it reports and evaluates is the wrapped method's own.
    assert float(m.loss(fb, rb, INFO).total) == pytest.approx(float(-0.5 * _ce(model, fb) + 2 * _ce(model, rb)), 1e-5)


def test_sam_keeps_the_wrapped_methods_state(setup) -> None:  # type: ignore[no-untyped-def]
    model, _, _, params, fb, rb, _, _ = setup
    m = _method("sam+sha256", model, params, rho=0.01)
    for value in (1.0, 2.0):
        m.after_step({"retain_loss": value}, INFO)
    assert m.state_dict() == {"baseline": None, "sum": 3.0, "n": 2}
    logs = m.backward([Micro(fb, rb)], INFO)
    assert logs["m"] == 1.2 and {"forget_loss", "retain_loss", "loss", "sam_grad_norm"} <= set(logs)


@pytest.mark.parametrize("name", [*sorted(METHODS), "sam+sha256", "sam+npo"])
def test_one_trainer_step_touches_only_trainable_parameters(setup, name: str) -> None:  # type: ignore[no-untyped-def]
    model, tok, names, params, _, _, forget, retain = setup
    cfg = UnlearnConfig(method=name, layers=LAYERS, batch_size=2, eval_every=100, checkpoint_every=100)
    cls = method_class(name)
    mcfg = cfg.method_config()
    method = cls(
        mcfg, model, params, reference=_frozen_copy(model) if cls.wants_reference(mcfg) else None, layers=LAYERS
    )
    data = PairedBatches(forget, retain, 2, 0, tok.pad_token_id)
    held = HeldOut(chunks(forget, 2, tok.pad_token_id), chunks(retain, 2, tok.pad_token_id), [])
    trainer = Trainer(cfg, method, model, names, data, held)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train_step(0)
    for n, p in model.named_parameters():
        if n in names:
            assert not torch.equal(p, before[n]), f"{name}: trainable {n} did not change"
        else:
            assert torch.equal(p, before[n]), f"{name}: frozen {n} changed"
            assert p.grad is None
    state_params = {id(p) for p in trainer.optimizer.state}
    assert state_params <= {id(p) for p in params}
    if not cls.owns_update:
        assert state_params == {id(p) for p in params}


def test_the_early_stop_waits_for_every_document_not_only_the_average(setup) -> None:  # type: ignore[no-untyped-def]
    """early_stop_per_document: an average under its target with one person still mostly reproduced is not
    'forgotten' (the gate checks each request); the evaluation reports the worst document's share."""
    from amnesia.science.records import document_of
    from amnesia.stages.unlearn.trainer import held_out_batches, worst_document

    assert worst_document([True, True, False, False, False], ["a", "a", "b", "b", "b"]) == 1.0
    assert worst_document([True, False, False, False], ["a", "a", "b", "b"]) == 0.5
    assert worst_document([], []) == 0.0
    assert document_of("doc-7qa3") == "doc-7" and document_of("doc-7sc0") == "doc-7" and document_of("x") == "x"

    model, tok, names, params, _, _, forget, retain = setup
    cfg = UnlearnConfig(layers=LAYERS, batch_size=2, early_stop_forget_exact=0.1, early_stop_per_document=0.25)
    method = method_class("sha256")(cfg.method_config(), model, params, layers=LAYERS)
    held = held_out_batches([], retain, forget, 2, tok.pad_token_id)
    assert held.forget_documents == [document_of(e.id) for e in forget] and len(held.forget_documents) == len(forget)
    trainer = Trainer(cfg, method, model, names, PairedBatches(forget, retain, 2, 0, tok.pad_token_id), held)
    row = trainer.evaluate(0)
    assert 0.0 <= row["forget_exact"] <= row["forget_exact_worst_document"] <= 1.0  # the worst is at least the mean

    average_only = {"step": 10.0, "eval_loss": 1.0, "forget_exact": 0.05, "forget_exact_worst_document": 0.75}
    trainer._after_eval(average_only)
    assert not trainer.state.stopped and not trainer.state.best_met  # one person is still 3/4 there
    everyone = average_only | {"step": 20.0, "eval_loss": 2.0, "forget_exact_worst_document": 0.25}
    trainer._after_eval(everyone)
    assert trainer.state.stopped == "forget_target_met" and trainer.state.best_loss == 2.0  # met beats a lower loss
    plain = UnlearnConfig(layers=LAYERS, batch_size=2, early_stop_forget_exact=0.1)
    trainer.cfg, trainer.state.stopped = plain, ""
    trainer._after_eval(average_only | {"step": 30.0})
    assert trainer.state.stopped == "forget_target_met"  # without the rule, the average decides (as before)


# ---------------------------------------------------------------- UNDO: unlearn, noise, distil


def _undo_trainer(tiny_model_dir: Path, store_root: str | None = None, early: float | None = None):  # type: ignore[no-untyped-def]
    """A fresh tiny model and an UNDO trainer: 4 sha256 steps (or until `early`, the forget target), then 6
    of distillation."""
    from amnesia.stages.unlearn.checkpoint import CheckpointStore
    from amnesia.storage.artifacts import ArtifactStore

    model, tok = (loaded := load_model(str(tiny_model_dir))).model, loaded.tokenizer
    names = trainable_names(model, inspect_model(model), "mlp", LAYERS)
    params = freeze_all_but(model, names)
    forget = [encode(tok, r) for r in _records(FORGET, "f")]
    retain = [encode(tok, r) for r in _records(RETAIN, "r")]
    args = {"distill_steps": 6, "alpha": 0.5, "seed": 3}
    cfg = UnlearnConfig(method="undo", method_args=args, layers=LAYERS, batch_size=2, max_steps=4, epochs=10,
                        eval_every=2, checkpoint_every=2, lr=1e-2, early_stop_forget_exact=early)  # fmt: skip
    method = method_class("undo")(cfg.method_config(), model, params, layers=LAYERS)
    store = CheckpointStore(ArtifactStore(), store_root, "undo-test") if store_root else None
    data = PairedBatches(forget, retain, 2, 0, tok.pad_token_id)
    held = HeldOut(chunks(forget, 2, tok.pad_token_id), chunks(retain, 2, tok.pad_token_id), [])
    return model, names, Trainer(cfg, method, model, names, data, held, store)


def test_undo_noises_the_teacher_then_distils_to_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from amnesia.science.plots import curves
    from amnesia.science.unlearning.methods.undo import masked_kl

    model, names, trainer = _undo_trainer(tiny_model_dir, early=0.05)  # the tiny model reproduces nothing
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in names}
    method = trainer.method
    seen: dict[str, object] = {}
    switch = method.next_phase

    def watch(step: int) -> int:  # the teacher is what phase 0 kept; the student its noised copy
        budget = switch(step)
        if budget:
            seen["step"], seen["teacher"] = step, [t.clone() for t in method.teacher]
            seen["student"] = [p.detach().clone() for p in method.trainable]
        return budget

    method.next_phase = watch  # type: ignore[method-assign]
    state = trainer.train()
    # unlearning met its target at the first evaluation; distillation ran its 6 steps all the same
    assert seen["step"] == 2 and state.phase == 1 and state.step == 8 and state.stopped == "phase_steps"
    assert state.phase_ends == [{"phase": 0, "step": 2, "stopped": "forget_target_met", "best_step": 2}]
    teacher, student = seen["teacher"], seen["student"]
    gen = torch.Generator().manual_seed(3)  # noise: theta = (1 - a) teacher + a * N(0, initializer_range)
    std = model.config.initializer_range
    for t, s, p in zip(teacher, student, method.trainable, strict=True):  # type: ignore[call-overload]
        if p.dim() < 2:
            assert torch.equal(s, t)  # norms and biases keep the teacher's values
            continue
        expected = 0.5 * t + 0.5 * torch.randn(tuple(p.shape), generator=gen) * std
        torch.testing.assert_close(s, expected, rtol=0, atol=1e-6)
    for t, p in zip(teacher, method.trainable, strict=True):  # type: ignore[call-overload]
        assert not torch.equal(t, p)  # the student moved off the noise but did not become the teacher
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    rows = state.history
    assert all("distill_loss" not in r for r in rows[:2]) and all("distill_loss" in r for r in rows[2:])
    assert all("forget_loss" in r for r in rows[:2])
    assert rows[-1]["distill_loss"] < 0.5 * rows[2]["distill_loss"]  # the student comes back toward the teacher
    assert [e["step"] for e in state.evals] == [0.0, 2.0, 2.0, 4.0, 6.0, 8.0]  # phase 1 starts with an evaluation

    # the distillation term is KL(p_teacher || p_student) over the real tokens, and 0 at the teacher
    batch = trainer.held_out.retain[0]
    with torch.no_grad():
        mine = method.eval_loss(trainer.held_out.forget[0], batch, StepInfo(8, 4, 0.0)).total
        student_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        teacher_logits = method._teacher_logits(batch)
    keep = batch.attention_mask.bool()
    ref = F.kl_div(torch.log_softmax(student_logits[keep], -1), torch.log_softmax(teacher_logits[keep], -1),
                   log_target=True, reduction="batchmean")  # fmt: skip
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    assert float(masked_kl(teacher_logits, teacher_logits, keep, 2.0)) == pytest.approx(0.0, abs=1e-6)

    # the curves a person reads: the distillation loss drawn, and a line where distillation starts
    def pixels(starts: list[float]) -> np.ndarray:
        path = curves(state.history, state.evals, "undo", tmp_path / f"c{len(starts)}.png", starts)
        return np.asarray(Image.open(path).convert("L"), dtype=float)

    marked, plain = pixels([e["step"] for e in state.phase_ends]), pixels([])
    assert marked.std() > 10 and (marked != plain).any(axis=0).sum() >= 3  # one dotted column per panel


def test_undo_killed_while_distilling_resumes_to_the_same_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The checkpoint keeps the teacher, the phase and its bounds: a run killed at step 7 (distilling since
    step 4) resumes from step 6 and ends bit for bit where the uninterrupted run does."""
    model, names, whole = _undo_trainer(tiny_model_dir, str(tmp_path / "a"))
    whole.train()
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    class Killed(Exception):
        pass

    def kill(kind: str, row: dict[str, float]) -> None:
        if kind == "step" and row["step"] == 7:
            raise Killed

    _, _, first = _undo_trainer(tiny_model_dir, str(tmp_path / "b"))
    first.on_record = kill
    with pytest.raises(Killed):
        first.train()
    model, _, resumed = _undo_trainer(tiny_model_dir, str(tmp_path / "b"))
    state = resumed.train()
    assert state.resumed_from == 6 and state.phase == 1 and state.step == 10
    for n, p in model.named_parameters():
        assert torch.equal(p, expected[n]), f"{n} differs after resuming"


def test_undo_config_names_what_is_wrong() -> None:
    from amnesia.core.config import ConfigError, parse_model

    with pytest.raises(ConfigError, match=r"method_args: inner_args.m_min: Input should be greater than or equal"):
        parse_model(UnlearnConfig, {"method": "undo", "method_args": {"inner_args": {"m_min": -1}}}, "unlearn")
    with pytest.raises(ConfigError, match="undo: inner must be a method that the optimizer steps, not 'ngdiff'"):
        parse_model(UnlearnConfig, {"method": "undo", "method_args": {"inner": "ngdiff"}}, "unlearn")
    with pytest.raises(ConfigError, match="method_args: alpha: Input should be less than 1"):
        parse_model(UnlearnConfig, {"method": "undo", "method_args": {"alpha": 1.0}}, "unlearn")
    cfg = UnlearnConfig(method="undo", method_args={"inner": "npo", "inner_args": {"beta": 0.2}})
    assert method_class("undo").wants_reference(cfg.method_config())  # npo's reference model is undo's too
    assert "undo" in method_names() and "sam+undo" not in method_names()
