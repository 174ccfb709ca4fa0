"""The component skin: a decorated function runs the library in kfp.local against the real stack."""

import json
from pathlib import Path

from kfp import local

from amnesia.storage.artifacts import ArtifactStore
from components import IMAGE, amnesia_component


@amnesia_component
def store_roundtrip(uri: str) -> str:
    """Writes a folder through the artifact store from inside a KFP task and returns its ref."""
    import tempfile
    from pathlib import Path

    from amnesia.storage.artifacts import ArtifactStore

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a.txt").write_text("from a kfp task")
        return ArtifactStore().put_dir(Path(tmp), uri).model_dump_json()


def test_component_spec_uses_the_project_image() -> None:
    spec = store_roundtrip.component_spec
    container = spec.implementation.container
    assert container.image == IMAGE
    assert "pip install" not in " ".join(container.command), "the image already holds kfp and the library"


def test_component_runs_in_kfp_local(store: ArtifactStore, s3_prefix: str, tmp_path: Path) -> None:
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = store_roundtrip(uri=s3_prefix)
    ref = json.loads(task.output)
    assert ref["uri"] == s3_prefix and ref["digest"] == store.read_manifest(s3_prefix).digest
