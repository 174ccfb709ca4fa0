"""Record schemas (SemEval-2025 Task 4 / LUME, MIA documents, MMLU) and their loaders.

Loaders read JSONL, Parquet, a `datasets` save_to_disk folder, or a hub dataset id (online only),
from a local path or an s3:// URI, streaming row by row. Every error is one line naming the file,
the line (or row) and the field. Messages never quote record text: it is personal data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from amnesia.core.errors import AmnesiaError

if TYPE_CHECKING:
    pass

# "<document id>sc<n>" (sentence completion) or "<document id>qa<n>" (question answering).
# The official scorer reads an item's kind from its id's last three characters: one digit after sc / qa.
ID_PATTERN = re.compile(r"^(?P<doc>.+)(?P<kind>sc|qa)(?P<n>\d)$")
_MANY_DIGITS = re.compile(r"(sc|qa)\d{2,}$")


def document_of(item_id: str) -> str:
    """`<document>sc0` / `<document>qa3` -> `<document>`; an id of another shape is its own document."""
    found = ID_PATTERN.match(item_id)
    return found["doc"] if found else item_id


class RecordError(AmnesiaError):
    """A record file or row is malformed; the message names file, line/row and field."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)


class UnlearningRecord(_Record):
    """One SemEval/LUME item: input (prompt) and output (gold continuation or answer)."""

    id: str = Field(min_length=1)
    input: str
    output: str
    task: str = Field(min_length=1)
    split: str | None = None

    @field_validator("id")
    @classmethod
    def _id_suffix(cls, value: str) -> str:
        if _MANY_DIGITS.search(value):
            raise ValueError(
                f"id {value!r}: the official scorer reads the kind from the id's last three characters, so an item "
                "number above 9 would not be scored; number a document's items 0-9 (or split the document)"
            )
        if not ID_PATTERN.match(value):
            raise ValueError(f"id {value!r} must end in sc<n> (sentence completion) or qa<n> (question), n = 0-9")
        return value

    @property
    def kind(self) -> Literal["sc", "qa"]:
        return ID_PATTERN.match(self.id)["kind"]  # type: ignore[index, return-value]

    @property
    def document_id(self) -> str:
        return document_of(self.id)

    @property
    def index(self) -> int:
        return int(ID_PATTERN.match(self.id)["n"])  # type: ignore[index]


class MIADocument(_Record):
    """A document for the membership-inference attack (members: forget docs; non-members: unseen)."""

    id: str = Field(min_length=1)
    document: str = Field(min_length=1)


class MMLUQuestion(_Record):
    """A 4-choice question in the cais/mmlu columns."""

    question: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    choices: list[str] = Field(min_length=4, max_length=4)
    answer: int = Field(ge=0, le=3)


R = TypeVar("R", bound=BaseModel)


# ---------------------------------------------------------------- row validation


def _row_error(source: str, where: str, err: ValidationError) -> RecordError:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(row)"
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "missing"
    return RecordError(f"{source}: {where}: field '{field}': {msg}")


def _validate(schema: type[R], row: Any, source: str, where: str) -> R:
    if not isinstance(row, dict):
        raise RecordError(f"{source}: {where}: expected a JSON object, got {type(row).__name__}")
    try:
        return schema.model_validate(row)
    except ValidationError as err:
        raise _row_error(source, where, err) from None


# ---------------------------------------------------------------- formats


def _iter_jsonl(path: Path, schema: type[R], source: str, allow_empty: bool = False) -> Iterator[R]:
    seen = False
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RecordError(f"{source}: line {lineno}: not UTF-8 text (byte {err.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{source}: line {lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
            seen = True
            yield _validate(schema, row, source, f"line {lineno}")
    if not seen and not allow_empty:
        raise RecordError(f"{source}: empty (no records)")


def _iter_parquet(path: Path, schema: type[R], source: str, allow_empty: bool = False) -> Iterator[R]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise RecordError(f"{source}: not a readable Parquet file ({err.__class__.__name__})") from None
    _check_columns(pf.schema_arrow.names, schema, source)
    row_no = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            row_no += 1
            yield _validate(schema, row, source, f"row {row_no}")
    if row_no == 0 and not allow_empty:
        raise RecordError(f"{source}: empty (no records)")


def iter_saved_dataset(path: Path, schema: type[R], source: str, split: str | None) -> Iterator[R]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise RecordError(f"{source}: a DatasetDict with splits {sorted(ds)}; name one (got {split!r})")
        ds = ds[split]
    yield from iter_dataset(ds, schema, source)


def iter_dataset(ds: Any, schema: type[R], source: str) -> Iterator[R]:
    _check_columns(ds.column_names, schema, source)
    if len(ds) == 0:
        raise RecordError(f"{source}: empty (no records)")
    for i, row in enumerate(ds, start=1):
        yield _validate(schema, row, source, f"row {i}")


def _check_columns(names: Iterable[str], schema: type[BaseModel], source: str) -> None:
    required = [n for n, f in schema.model_fields.items() if f.is_required()]
    missing = [n for n in required if n not in set(names)]
    if missing:
        raise RecordError(f"{source}: missing column '{missing[0]}' (has: {', '.join(sorted(names))})")


# ---------------------------------------------------------------- sources


def iter_file(path: Path, schema: type[R], name: str, allow_empty: bool = False) -> Iterator[R]:
    if path.suffix in (".jsonl", ".json"):
        yield from _iter_jsonl(path, schema, name, allow_empty)
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path, schema, name, allow_empty)
    else:
        raise RecordError(f"{name}: unsupported format '{path.suffix}' (use .jsonl, .parquet or a saved dataset)")


# ---------------------------------------------------------------- writing


def write_jsonl(records: Iterable[BaseModel], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.model_dump(exclude_none=True), ensure_ascii=False, sort_keys=True) + "\n")
    return path


def _arrow_type(annotation: Any) -> Any:
    import pyarrow as pa

    if annotation in (int,):
        return pa.int64()
    if annotation == list[str]:
        return pa.list_(pa.string())
    return pa.string()  # str and str | None


def write_parquet(records: Iterable[BaseModel], path: Path, schema: type[BaseModel]) -> Path:
    """Deterministic Parquet: the schema's column order and types, no statistics, no timestamps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.schema([(n, _arrow_type(f.annotation)) for n, f in schema.model_fields.items()])
    table = pa.Table.from_pylist([r.model_dump() for r in records], schema=arrow)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", write_statistics=False)
    return path


# ---------------------------------------------------------------- MMLU


