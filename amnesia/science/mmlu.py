"""MMLU, k-shot, in two formats. letter (the standard harness): the answer is the argmax over the
next-token logits of " A", " B", " C", " D" after the prompt's final "Answer:". cloze (lighteval's and
SmolLM's MMLU-cloze): the answer is the choice whose own text is most likely after "Answer:", per
character. Small models answer letters at chance and show their knowledge only in cloze. Any 4-choice
set in the cais/mmlu columns goes through here, the demo's utility set included."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from amnesia.science.prompts import LETTERS, cloze_prompt, mmlu_prompt
from amnesia.science.records import MMLUQuestion


@dataclass
class MMLUResult:
    accuracy: float  # share of all questions answered right (lm-eval's MMLU average)
    macro: float  # mean of the per-subject accuracies
    subjects: dict[str, float]
    questions: int
    shots_reduced: int  # questions whose prompt had to drop shots to fit the model's context
    format: str = "letter"


def sample(questions: Sequence[MMLUQuestion], per_subject: int | None, seed: int) -> list[MMLUQuestion]:
    """All questions, or `per_subject` of each subject drawn with a fixed seed (order kept)."""
    if per_subject is None:
        return list(questions)
    by: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by[q.subject].append(i)
    keep: set[int] = set()
    for subject, idx in sorted(by.items()):
        keep.update(random.Random(f"{seed}:{subject}").sample(idx, min(per_subject, len(idx))))
    return [q for i, q in enumerate(questions) if i in keep]


def letter_ids(tokenizer: Any) -> list[int]:
    ids = [tokenizer(f" {c}", add_special_tokens=False)["input_ids"] for c in LETTERS]
    if any(len(i) != 1 for i in ids):  # e.g. a tokenizer without a " A" token: use the letter itself
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in LETTERS]
    return [i[-1] for i in ids]


def _context_limit(model: Any) -> int:
    return int(getattr(model.config, "max_position_embeddings", 4096) or 4096)


def build_prompts(
    tokenizer: Any,
    questions: Sequence[MMLUQuestion],
    dev: Sequence[MMLUQuestion],
    shots: int,
    limit: int,
    prompt: Any = mmlu_prompt,
) -> tuple[list[list[int]], int]:
    """Token ids of each question's prompt with the first `shots` dev questions of its subject; shots are
    dropped from the end while the prompt does not fit the model's context."""
    by_subject: dict[str, list[MMLUQuestion]] = defaultdict(list)
    for q in dev:
        by_subject[q.subject].append(q)
    out, reduced = [], 0
    for q in questions:
        k = min(shots, len(by_subject[q.subject]))
        while True:
            ids = tokenizer(prompt(q, by_subject[q.subject][:k]), add_special_tokens=True)["input_ids"]
            if len(ids) <= limit or k == 0:
                break
            k -= 1
        reduced += k < min(shots, len(by_subject[q.subject]))
        out.append(ids[-limit:])
    return out, reduced


@torch.inference_mode()
def score_mmlu(
    model: Any,
    tokenizer: Any,
    questions: Sequence[MMLUQuestion],
    dev: Sequence[MMLUQuestion],
    shots: int,
    batch: int,
    fmt: str = "letter",
    done: Callable[[int], None] = lambda n: None,
) -> MMLUResult:
    """Accuracy in the letter or cloze format; `done` hears how many questions (letter) or scored
    choices (cloze: one row per choice) each batch finished."""
    if fmt == "cloze":
        return _score_cloze(model, tokenizer, questions, dev, shots, batch, done)
    prompts, reduced = build_prompts(tokenizer, questions, dev, shots, _context_limit(model))
    letters = torch.tensor(letter_ids(tokenizer))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    hits: dict[int, bool] = {}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch together
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):  # left padding: every prompt ends at the last column
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -1]
        picks = logits[:, letters.to(device)].argmax(-1).tolist()
        for row, i in enumerate(chunk):
            hits[i] = picks[row] == questions[i].answer
        done(len(chunk))
    return _result(questions, hits, reduced, "letter")


def _result(questions: Sequence[MMLUQuestion], hits: dict[int, bool], reduced: int, fmt: str) -> MMLUResult:
    by: dict[str, list[bool]] = defaultdict(list)
    for i, q in enumerate(questions):
        by[q.subject].append(hits[i])
    subjects = {s: sum(v) / len(v) for s, v in sorted(by.items())}
    return MMLUResult(
        accuracy=sum(hits.values()) / len(hits),
        macro=sum(subjects.values()) / len(subjects),
        subjects=subjects,
        questions=len(questions),
        shots_reduced=reduced,
        format=fmt,
    )


def _score_cloze(
    model: Any,
    tokenizer: Any,
    questions: Sequence[MMLUQuestion],
    dev: Sequence[MMLUQuestion],
    shots: int,
    batch: int,
    done: Callable[[int], None] = lambda n: None,
) -> MMLUResult:
    """Sum of log p(choice tokens | prompt) / characters of the choice, argmax over the four choices.
    Prompt and continuation are tokenised apart (as the harnesses do), so every choice sees the same prompt."""
    limit = _context_limit(model)
    conts = [[tokenizer(f" {c}", add_special_tokens=False)["input_ids"] for c in q.choices] for q in questions]
    longest = max((len(c) for cs in conts for c in cs), default=1)
    prompts, reduced = build_prompts(tokenizer, questions, dev, shots, limit - longest, cloze_prompt)
    rows = [(i, j) for i in range(len(questions)) for j in range(len(questions[i].choices))]
    rows.sort(key=lambda r: len(prompts[r[0]]) + len(conts[r[0]][r[1]]))  # similar lengths batch together
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    scores: dict[tuple[int, int], float] = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        seqs = [prompts[i] + conts[i][j] for i, j in chunk]
        width = max(map(len, seqs))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(seqs):  # right padding: positions stay those of an unpadded run
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for row, (i, j) in enumerate(chunk):
            p, c = len(prompts[i]), conts[i][j]
            picked = logp[row, p - 1 : p - 1 + len(c)].gather(-1, torch.tensor(c, device=device)[:, None])
            scores[(i, j)] = picked.sum().item() / len(f" {questions[i].choices[j]}")
        done(len(chunk))
    hits = {}
    for i, q in enumerate(questions):
        best = max(range(len(q.choices)), key=lambda j: scores[(i, j)])
        hits[i] = best == q.answer
    return _result(questions, hits, reduced, "cloze")
