"""Records from wherever they live: a local file or folder, an s3:// file or folder (fetched, verified;
a personal file into its own temporary copy, removed once read), or a hub id (online only). Parsing and
validation are the science's (amnesia.science.records); this is where they are read from."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from amnesia.science.records import (
    MMLUQuestion,
    R,
    RecordError,
    UnlearningRecord,
    iter_dataset,
    iter_file,
    iter_saved_dataset,
)
from amnesia.storage.artifacts import ArtifactStore


@dataclass(frozen=True)
class Source:
    """A resolved local file or folder, plus the name errors should use for it."""

    path: Path
    name: str


def resolve(uri: str, cache_root: Path | None = None, store: ArtifactStore | None = None) -> Source:
    """An s3:// file or folder is fetched (verified) into the cache; a local path is used as it is.
    Pass the run's store: the default one reads its endpoint and keys from the environment."""
    if uri.startswith("s3://"):
        from amnesia.storage.artifacts import ArtifactStore
        from amnesia.storage.uri import MANIFEST_NAME, join

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
        from amnesia.storage.layout import personal

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
            yield from iter_saved_dataset(path, schema, src.name, split)
            return
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
        if not files:
            raise RecordError(f"{src.name}: a folder with no .jsonl, .parquet or saved dataset in it")
        for f in files:
            yield from iter_file(f, schema, f"{src.name.rstrip('/')}/{f.name}", allow_empty)
        return
    try:
        yield from iter_file(path, schema, src.name, allow_empty)
    finally:
        from amnesia.storage.layout import personal

        if uri.startswith("s3://") and personal(uri):  # a decrypted copy of personal data is not kept
            shutil.rmtree(path.parent, ignore_errors=True)


def _iter_hub(repo_id: str, schema: type[R], split: str | None, name: str | None = None) -> Iterator[R]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, name, split=split or "train")
    except Exception as err:  # offline, unknown id, no such split: all end here
        raise RecordError(
            f"{repo_id}: not a local path, and loading it from the hub failed "
            f"({err.__class__.__name__}); pass a local folder or an s3:// URI"
        ) from None
    yield from iter_dataset(ds, schema, repo_id)


def load_records(
    uri: str,
    schema: type[R] = UnlearningRecord,
    split: str | None = None,  # type: ignore[assignment]
    cache_root: Path | None = None,
    allow_empty: bool = False,
    store: ArtifactStore | None = None,
) -> list[R]:
    return list(iter_records(uri, schema, split, cache_root, allow_empty, store))


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
        rows = (q for f in files for q in iter_file(f, MMLUQuestion, f"{src.name.rstrip('/')}/{f.relative_to(root)}"))
    out = [q for q in rows if wanted is None or q.subject in wanted]
    if not out:
        raise RecordError(
            f"{uri}: no MMLU questions for split '{split}'" + (f" and subjects {sorted(wanted)}" if wanted else "")
        )
    return out
