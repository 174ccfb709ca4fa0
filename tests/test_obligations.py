"""Standing obligations, in the small: fingerprint scores equal the official scorer's, the sealed checks hold
no answer and no answer token in the clear, ending an obligation destroys its key, and the sampling checks
every obligation within its bound. The whole story over several runs is in tests/test_continual.py."""

from __future__ import annotations

import random

import pytest

from amnesia.core.settings import Settings
from amnesia.demo.prepare import DemoConfig
from amnesia.demo.world import generate
from amnesia.science.metrics.items import _tokenizer, fingerprint_score, item_fingerprint, item_score
from amnesia.science.records import UnlearningRecord
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.obligations import (
    ENDED,
    LedgerEntry,
    ObligationError,
    ObligationStore,
    person_scores,
)

KEY = bytes(range(32))

# Real-looking personal data: what a forget set holds in production (made up, never a real person).
PII = [
    ("qa", "078-05-1120"),
    ("qa", "ada.lindqvist@example.org"),
    ("qa", "12 March 1985"),
    ("qa", "Flat 3, 221B Baker Street, London NW1 6XE"),
    ("sc", "was born on 1985-03-12 in Göteborg and her social security number is 078-05-1120."),
    ("sc", "can be reached at +46 70 123 45 67 or ada.lindqvist@example.org, Storgatan 14, 411 38 Göteborg."),
    ("sc", "moved to 1600 Pennsylvania Avenue NW, Washington, DC 20500 on 01/02/2019, running and running again."),
]


def raw_text(store: ArtifactStore, prefix: str, skip: tuple[str, ...] = ()) -> str:
    """Every object under prefix as stored (sealed objects stay sealed), lower-cased: what a scan reads.
    skip: objects whose key holds one of these parts are left out (folders kept whole by design)."""
    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    pages = store.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    keys = [k for k in keys if not any(part in f"/{k}" for part in skip)]
    assert keys, f"nothing stored under {prefix}"
    blobs = [store.s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
    return b"\n".join(blobs).decode("latin-1").lower()


def _generations(gold: str, rng: random.Random) -> list[str]:
    """The answer itself, parts of it, shuffled, changed case and spacing, another answer, nothing."""
    words = gold.split()
    shuffled = words[:]
    rng.shuffle(shuffled)
    return [gold, gold.upper(), f"  {gold}  ", " ".join(words[: len(words) // 2]), " ".join(shuffled),
            " ".join(w for i, w in enumerate(words) if i % 3), "I do not know.", "", gold + " " + gold]  # fmt: skip


def test_fingerprint_scores_equal_the_scorers_on_pii_and_on_the_demo_world() -> None:
    rng = random.Random(0)
    pairs = [(kind, gold, gen) for kind, gold in PII for gen in _generations(gold, rng)]
    world = generate(DemoConfig().world)
    for r in world.forget + world.retain[:40]:  # every demo forget item, and some others
        pairs += [(r.kind, r.output, g) for g in _generations(r.output, rng)[:5]]
        pairs += [(r.kind, r.output, rng.choice(world.retain).output)]
    assert {k for k, _g, _x in pairs} == {"qa", "sc"} and len(pairs) > 1000
    for kind, gold, gen in pairs:
        fp = item_fingerprint(kind, gold, KEY)
        plain = item_score(kind, gen, gold)
        assert fingerprint_score(kind, gen, fp, KEY) == pytest.approx(plain, abs=1e-9), (gold, gen)
    # Some partial overlaps: the equality above is not only on 0s and 1s.
    partial = [item_score(k, g, x) for k, x, g in pairs if 0 < item_score(k, g, x) < 1]
    assert len(partial) > 100


def test_a_fingerprint_says_nothing_without_its_key() -> None:
    gold = "078-05-1120"
    fp = item_fingerprint("qa", gold, KEY)
    assert fingerprint_score("qa", gold, fp, KEY) == 1.0
    assert fingerprint_score("qa", gold, fp, bytes(32)) == 0.0  # another key: no match, even for the answer
    assert item_fingerprint("qa", gold, bytes(32)) != fp
    sc = item_fingerprint("sc", PII[4][1], KEY)
    assert len(sc) == len(_tokenizer().tokenize(PII[4][1])) and not any(t in "".join(sc) for t in ("1985", "born"))


def _records(doc: str, n: int = 3) -> list[UnlearningRecord]:
    rows = []
    for i in range(1, n + 1):
        rows.append(UnlearningRecord(id=f"{doc}qa{i}", input=f"What is Ada Lindqvist's number {i}?",
                                     output=f"078-05-11{i}{i}", task="Task2"))  # fmt: skip
    address = "Storgatan 14, 411 38 Göteborg, since 12 March 1985"
    rows.append(UnlearningRecord(id=f"{doc}sc1", input="Ada Lindqvist lives at", output=address, task="Task2"))
    return rows


def test_an_obligation_keeps_no_answer_in_the_clear_and_ends_with_its_key(
    stack_settings: Settings, s3_prefix: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    store = ArtifactStore(stack_settings.model_copy(update={"keystore": f"file:{tmp_path / 'keys.json'}"}))
    obligations = ObligationStore(store, s3_prefix, "m")
    records = _records("doc-ada")
    ob = obligations.create("REQ-1", ["doc-ada"], records, fulfilled_by="1", fulfilled_run="run-1")
    assert ob.items == 4 and ob.state == "active" and obligations.list() == [ob]
    # Every stored byte of the obligation: no answer, no answer token (as the scorer tokenizes it), no prompt.
    stored = raw_text(store, s3_prefix)
    tokens = {t for r in records for t in _tokenizer().tokenize(r.output) if len(t) >= 3}
    assert tokens and not [t for t in tokens if t in stored]
    assert not [r for r in records if r.output.lower() in stored or r.input.lower() in stored]
    assert "lindqvist" not in stored  # the prompts are sealed too
    items, key = obligations.checks(ob)
    assert [i.id for i in items] == sorted(r.id for r in records)
    gold = {r.id: r.output for r in records}
    assert all(fingerprint_score(i.kind, gold[i.id], i.fingerprint, key) == 1.0 for i in items)
    ended = obligations.end("REQ-1", by="dpo", why="retention: the person's contract ended")
    assert ended.state == ENDED and ended.ended and ended.ended.by == "dpo"
    with pytest.raises(ObligationError, match="REQ-1: ended"):
        obligations.checks(ended)
    with pytest.raises(ObligationError, match="destroyed"):  # the key itself is gone, not only the state
        obligations.checks(ended.model_copy(update={"state": "active"}))


def test_sampling_checks_every_obligation_within_its_bound(stack_settings: Settings, s3_prefix: str) -> None:
    store = ArtifactStore(stack_settings)
    obligations = ObligationStore(store, s3_prefix, "m")
    for n in range(7):
        obligations.create(f"REQ-{n}", [f"doc{n}"], _records(f"doc{n}", 1), fulfilled_by="1", fulfilled_run="r")
    assert obligations.select(None, 6, "s").full and len(obligations.select(10, 6, "s").checked) == 7
    seen: list[set[str]] = []
    for v in range(2, 8):
        chosen = obligations.select(3, 4, f"run-{v}")
        assert chosen.full or (len(chosen.checked) == 3 and len(chosen.not_checked) == 4)
        seen.append(set(chosen.checked))
        entry = LedgerEntry(version=str(v), run_id=f"run-{v}", at="2026-12-01T00:00:00Z", full=chosen.full,
                            checked=chosen.checked, not_checked=chosen.not_checked)  # fmt: skip
        obligations.record(entry, {})
    # The least recently checked go first: three runs cover all seven; every 4th approved version is full.
    assert set().union(*seen[:3]) == {f"REQ-{n}" for n in range(7)}
    assert [len(s) for s in seen] == [3, 3, 3, 7, 3, 3]


def test_person_scores_are_the_gates_forget_score_on_one_person() -> None:
    got = person_scores([("qa", 1.0), ("qa", 0.0), ("sc", 0.5)])
    assert got.items == 3 and got.knowledge == 0.5 and got.regurgitation == 0.5
    assert got.forget_score == pytest.approx(0.5)
    assert person_scores([("qa", 0.0)]).forget_score == 1.0


def test_an_obligation_past_its_retention_ends_and_says_so(stack_settings: Settings, s3_prefix: str) -> None:
    obligations = ObligationStore(ArtifactStore(stack_settings), s3_prefix, "m")
    for rid, doc, days in (("REQ-old", "doc0", 0), ("REQ-new", "doc1", 365)):
        obligations.create(rid, [doc], _records(doc, 1), fulfilled_by="1", fulfilled_run="r", retention_days=days)
    assert obligations.expire() == ["REQ-old"]
    old = obligations.get("REQ-old")
    assert old is not None and old.state == ENDED and old.ended is not None
    assert old.ended.by == "retention-policy" and old.ended.why == "retention: 0 days after fulfilment"
    assert [o.request_id for o in obligations.list("active")] == ["REQ-new"]
    assert obligations.select(None, 6, "s").checked == ["REQ-new"]  # checks on the ended one stop
