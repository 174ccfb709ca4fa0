"""Record schemas (SemEval-2025 Task 4 / LUME, MIA documents, MMLU) and their loaders.

Loaders read JSONL, Parquet, a `datasets` save_to_disk folder, or a hub dataset id (online only),
from a local path or an s3:// URI, streaming row by row. Every error is one line naming the file,
the line (or row) and the field. Messages never quote record text: it is personal data.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from amnesia.errors import AmnesiaError

if TYPE_CHECKING:
    from amnesia.storage import ArtifactStore

# "<document id>sc<n>" (sentence completion) or "<document id>qa<n>" (question answering).
ID_PATTERN = re.compile(r"^(?P<doc>.+)(?P<kind>sc|qa)(?P<n>\d+)$")


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
        if not ID_PATTERN.match(value):
            raise ValueError(f"id {value!r} must end in sc<n> (sentence completion) or qa<n> (question)")
        return value

    @property
    def kind(self) -> Literal["sc", "qa"]:
        return ID_PATTERN.match(self.id)["kind"]  # type: ignore[index, return-value]

    @property
    def document_id(self) -> str:
        return ID_PATTERN.match(self.id)["doc"]  # type: ignore[index]

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
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
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


def _iter_saved_dataset(path: Path, schema: type[R], source: str, split: str | None) -> Iterator[R]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise RecordError(f"{source}: a DatasetDict with splits {sorted(ds)}; name one (got {split!r})")
        ds = ds[split]
    yield from _iter_dataset(ds, schema, source)


def _iter_dataset(ds: Any, schema: type[R], source: str) -> Iterator[R]:
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


@dataclass(frozen=True)
class Source:
    """A resolved local file or folder, plus the name errors should use for it."""

    path: Path
    name: str


def resolve(uri: str, cache_root: Path | None = None, store: ArtifactStore | None = None) -> Source:
    """An s3:// file or folder is fetched (verified) into the cache; a local path is used as it is.
    Pass the run's store: the default one reads its endpoint and keys from the environment."""
    if uri.startswith("s3://"):
        from amnesia.storage import MANIFEST_NAME, ArtifactStore, join

        store = store or ArtifactStore()
        cache = Path(cache_root or Path.home() / ".cache" / "amnesia" / "data")
        if store.exists(join(uri, MANIFEST_NAME)):
            return Source(store.fetch_dir(uri, cache), uri)
        if not store.exists(uri):
            # A folder inside a stored folder (e.g. <world>/utility): fetch the enclosing one, verified.
            parts = uri.rstrip("/").split("/")
            for up in range(1, min(4, len(parts) - 3) + 1):
                parent = "/".join(parts[:-up])
                if store.exists(join(parent, MANIFEST_NAME)):
                    inner = store.fetch_dir(parent, cache).joinpath(*parts[-up:])
                    if inner.exists():
                        return Source(inner, uri)
                    break
            raise RecordError(f"{uri}: no such object or folder")
        name = uri.rsplit("/", 1)[-1]
        local = cache / "files" / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
        from amnesia.layout import personal

        if personal(uri):  # its own folder, removed once read (iter_records): never a shared, lasting copy
            local = Path(tempfile.mkdtemp(prefix="amnesia-personal-")) / name
        store.get_file(uri, local)
        return Source(local, uri)
    return Source(Path(uri), uri)


def _looks_like_hub_id(uri: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", uri)) and not Path(uri).exists()


def iter_records(
    uri: str,
    schema: type[R] = UnlearningRecord,
    split: str | None = None,  # type: ignore[assignment]
    cache_root: Path | None = None,
    allow_empty: bool = False,
    store: ArtifactStore | None = None,
) -> Iterator[R]:
    """Stream validated rows from a file, folder, s3:// URI or hub id. An empty file is an error (a user's
    input with nothing in it is a mistake) unless allow_empty: a stage's own empty set is legitimate."""
    if _looks_like_hub_id(uri):
        yield from _iter_hub(uri, schema, split)
        return
    src = resolve(uri, cache_root, store)
    path = src.path
    if not path.exists():
        raise RecordError(f"{src.name}: no such file or folder")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            yield from _iter_saved_dataset(path, schema, src.name, split)
            return
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
        if not files:
            raise RecordError(f"{src.name}: a folder with no .jsonl, .parquet or saved dataset in it")
        for f in files:
            yield from _iter_file(f, schema, f"{src.name.rstrip('/')}/{f.name}", allow_empty)
        return
    try:
        yield from _iter_file(path, schema, src.name, allow_empty)
    finally:
        from amnesia.layout import personal

        if uri.startswith("s3://") and personal(uri):  # a decrypted copy of personal data is not kept
            shutil.rmtree(path.parent, ignore_errors=True)


def _iter_file(path: Path, schema: type[R], name: str, allow_empty: bool = False) -> Iterator[R]:
    if path.suffix in (".jsonl", ".json"):
        yield from _iter_jsonl(path, schema, name, allow_empty)
    elif path.suffix == ".parquet":
        yield from _iter_parquet(path, schema, name, allow_empty)
    else:
        raise RecordError(f"{name}: unsupported format '{path.suffix}' (use .jsonl, .parquet or a saved dataset)")


def _iter_hub(repo_id: str, schema: type[R], split: str | None, name: str | None = None) -> Iterator[R]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, name, split=split or "train")
    except Exception as err:  # offline, unknown id, no such split: all end here
        raise RecordError(
            f"{repo_id}: not a local path, and loading it from the hub failed "
            f"({err.__class__.__name__}); pass a local folder or an s3:// URI"
        ) from None
    yield from _iter_dataset(ds, schema, repo_id)


def load_records(
    uri: str,
    schema: type[R] = UnlearningRecord,
    split: str | None = None,  # type: ignore[assignment]
    cache_root: Path | None = None,
    allow_empty: bool = False,
    store: ArtifactStore | None = None,
) -> list[R]:
    return list(iter_records(uri, schema, split, cache_root, allow_empty, store))


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


def load_mmlu(
    uri: str,
    split: str = "test",
    subjects: Iterable[str] | None = None,
    cache_root: Path | None = None,
    store: ArtifactStore | None = None,
) -> list[MMLUQuestion]:
    """MMLU in the cais/mmlu layout: a hub id (online), or a local / s3:// folder holding
    `<split>.jsonl`, `<split>.parquet`, `all/<split>-*.parquet` or `<subject>/<split>-*.parquet`."""
    wanted = set(subjects) if subjects is not None else None
    if _looks_like_hub_id(uri):
        rows: Iterable[MMLUQuestion] = _iter_hub(uri, MMLUQuestion, split, name="all")
    else:
        src = resolve(uri, cache_root, store)
        root = src.path
        candidates = [root / f"{split}.jsonl", root / f"{split}.parquet"]
        files = [p for p in candidates if p.exists()] or sorted((root / "all").glob(f"{split}-*.parquet"))
        files = files or sorted(root.glob(f"*/{split}-*.parquet"))
        if not files:
            raise RecordError(
                f"{src.name}: no MMLU '{split}' split found (expected {split}.jsonl, "
                f"{split}.parquet, all/{split}-*.parquet or <subject>/{split}-*.parquet)"
            )
        rows = (q for f in files for q in _iter_file(f, MMLUQuestion, f"{src.name.rstrip('/')}/{f.relative_to(root)}"))
    out = [q for q in rows if wanted is None or q.subject in wanted]
    if not out:
        raise RecordError(
            f"{uri}: no MMLU questions for split '{split}'" + (f" and subjects {sorted(wanted)}" if wanted else "")
        )
    return out
