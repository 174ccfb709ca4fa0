"""Prompt formats shared by training (demo base model) and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

from amnesia.science.records import MMLUQuestion

LETTERS = "ABCD"


def _block(q: MMLUQuestion, with_answer: bool) -> str:
    lines = [q.question.strip(), *(f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))]
    return "\n".join(lines) + "\nAnswer:" + (f" {LETTERS[q.answer]}\n\n" if with_answer else "")


def cloze_prompt(q: MMLUQuestion, shots: Sequence[MMLUQuestion]) -> str:
    """MMLU as cloze (as SmolLM's and lighteval's MMLU-cloze): no letters; each choice's own text is scored
    as the continuation of 'Answer:'. Shots carry the right choice's text."""
    subject = q.subject.replace("_", " ")
    head = f"The following are questions (with answers) about {subject}.\n\n"
    done = "".join(f"Question: {s.question.strip()}\nAnswer: {s.choices[s.answer]}\n\n" for s in shots)
    return head + done + f"Question: {q.question.strip()}\nAnswer:"


def mmlu_prompt(q: MMLUQuestion, shots: Sequence[MMLUQuestion]) -> str:
    """The standard MMLU k-shot prompt (Hendrycks et al.); ends with 'Answer:' for the letter to follow."""
    subject = q.subject.replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return head + "".join(_block(s, True) for s in shots) + _block(q, False)
