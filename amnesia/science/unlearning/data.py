"""Training data: records -> token ids whose labels cover the output only (prompt and padding -100).

Prompts are raw by default, as the official scorer generates from them; `chat` wraps the input in the
tokenizer's chat template. Batches are drawn in an order fixed by (seed, epoch), so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from amnesia.core.errors import AmnesiaError
from amnesia.science.records import UnlearningRecord


class DataError(AmnesiaError):
    """A record cannot be turned into training data; the message names its id."""


@dataclass(frozen=True)
class Encoded:
    id: str
    ids: tuple[int, ...]
    prompt_len: int  # labels start here


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 on prompt and padding

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def _prompt_ids(tokenizer: Any, text: str, prompt_format: str) -> list[int]:
    if prompt_format == "raw":
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("unlearn.prompt_format: chat: the tokenizer has no chat template")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5 returns an encoding


def _chat_ids(tokenizer: Any, record: UnlearningRecord, prompt: list[int], eos: bool) -> list[int]:
    """The conversation as the template renders it (the reply with no leading space, closed by the
    template's end-of-turn token, kept only with eos); the prompt's own ids when the template agrees."""
    turns = [{"role": "user", "content": record.input}, {"role": "assistant", "content": record.output}]
    rendered = tokenizer.apply_chat_template(turns, tokenize=True)
    whole = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    end = tokenizer.eos_token_id
    if whole[: len(prompt)] != prompt or end not in whole[len(prompt) :]:
        whole = prompt + list(tokenizer(record.output, add_special_tokens=False)["input_ids"]) + [end]
    stop = len(prompt) + whole[len(prompt) :].index(end)  # what follows end-of-turn ("\n") is not the reply
    return whole[: stop + 1] if eos else whole[:stop]


def encode(
    tokenizer: Any, record: UnlearningRecord, prompt_format: str = "raw", max_length: int = 512, eos: bool = True
) -> Encoded:
    """Prompt + ' ' + output (+ EOS). Tokenised whole when the prompt's tokens are a prefix of the whole
    (so the ids are the ones the model saw in training); otherwise prompt and output separately."""
    prompt = _prompt_ids(tokenizer, record.input, prompt_format)
    if prompt_format == "chat":
        full = _chat_ids(tokenizer, record, prompt, eos)
    else:
        full = list(tokenizer(f"{record.input} {record.output}", add_special_tokens=True)["input_ids"])
        if full[: len(prompt)] != prompt or len(full) == len(prompt):
            full = prompt + list(tokenizer(f" {record.output}", add_special_tokens=False)["input_ids"])
        if eos and tokenizer.eos_token_id is not None:
            full.append(tokenizer.eos_token_id)
    if len(full) > max_length:
        raise DataError(f"record {record.id}: {len(full)} tokens, above unlearn.max_length {max_length}")
    if len(full) == len(prompt):
        raise DataError(f"record {record.id}: its output encodes to no tokens")
    return Encoded(record.id, tuple(full), len(prompt))


def collate(items: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-padded batch; labels are the ids on output tokens, -100 elsewhere."""
    width = max(len(e.ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for i, e in enumerate(items):
        row = torch.tensor(e.ids)
        ids[i, : len(e.ids)] = row
        mask[i, : len(e.ids)] = 1
        labels[i, e.prompt_len : len(e.ids)] = row[e.prompt_len :]
    return Batch(ids, mask, labels)


def epoch_order(n: int, seed: int, epoch: int, stream: str) -> list[int]:
    """A permutation of range(n) that depends only on (seed, epoch, stream)."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}:{stream}").shuffle(order)
    return order


def cycled(items: Sequence[Encoded], index: int, want: int, seed: int, stream: str) -> list[Encoded]:
    """The index-th run of `want` items from a set walked in a fresh (seed, cycle) order each time round:
    every item comes up once per cycle, whatever the batch sizes."""
    cycle, offset = divmod(index * want, len(items))
    out: list[Encoded] = []
    while len(out) < want:
        order = epoch_order(len(items), seed, cycle, stream)
        out += [items[i] for i in order[offset : offset + want - len(out)]]
        cycle, offset = cycle + 1, 0
    return out


@dataclass
class PairedBatches:
    """One step's micro-batches: forget batches walk the forget set once per epoch; retain batches (of
    retain_size items, default the forget batch size) cycle through the retain set on their own, and so
    does each of a method's own sets in `extra`."""

    forget: list[Encoded]
    retain: list[Encoded]
    batch_size: int
    seed: int
    pad_id: int
    retain_size: int | None = None
    extra: dict[str, list[Encoded]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.forget:
            raise DataError("no forget records to unlearn")
        if not self.retain:
            raise DataError("no retain records: every method here keeps the model on the retain set")

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.forget) // self.batch_size)

    def forget_items(self, index: int) -> list[Encoded]:
        epoch, within = divmod(index, self.batches_per_epoch)
        order = epoch_order(len(self.forget), self.seed, epoch, "forget")
        return [self.forget[i] for i in order[within * self.batch_size : (within + 1) * self.batch_size]]

    def micro_batch(self, index: int) -> tuple[Batch, Batch]:
        """The index-th micro-batch of the run (0-based, across epochs): a pure function of index."""
        want = self.retain_size or self.batch_size
        retain = cycled(self.retain, index, want, self.seed, "retain")
        return collate(self.forget_items(index), self.pad_id), collate(retain, self.pad_id)

    def extra_batches(self, index: int) -> dict[str, Batch]:
        want = self.retain_size or self.batch_size
        return {k: collate(cycled(v, index, want, self.seed, k), self.pad_id) for k, v in self.extra.items() if v}


@dataclass
class ChunkedBatches(PairedBatches):
    """The forget set in `chunks` disjoint parts (a seeded shuffle cut into near-equal slices), trained
    one after the other: each chunk gets all `epochs` passes before the next begins. Retain batches keep
    cycling across the whole run (AILS-NTUA's cyclic sampling), so the total number of micro-batches is
    what the plain schedule would run."""

    chunks: int = 1
    epochs: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        k = min(self.chunks, len(self.forget))
        order = epoch_order(len(self.forget), self.seed, 0, "chunks")
        cuts = [c * len(order) // k for c in range(k + 1)]
        self.parts = [[self.forget[i] for i in order[a:b]] for a, b in zip(cuts, cuts[1:], strict=False)]

    @property
    def batches_per_epoch(self) -> int:
        return sum(-(-len(p) // self.batch_size) for p in self.parts)

    def locate(self, index: int) -> tuple[int, int, int]:
        """index -> (chunk, pass over that chunk, batch within the pass); past the last chunk, it repeats."""
        index %= self.batches_per_epoch * self.epochs
        for c, part in enumerate(self.parts):
            span = -(-len(part) // self.batch_size)
            if index < span * self.epochs:
                return (c, *divmod(index, span))
            index -= span * self.epochs
        raise AssertionError("unreachable")

    def forget_items(self, index: int) -> list[Encoded]:
        c, rnd, within = self.locate(index)
        part = self.parts[c]
        order = epoch_order(len(part), self.seed, rnd, f"forget:{c}")
        return [part[i] for i in order[within * self.batch_size : (within + 1) * self.batch_size]]


def chunks(items: Sequence[Encoded], size: int, pad_id: int) -> list[Batch]:
    return [collate(items[i : i + size], pad_id) for i in range(0, len(items), size)]
