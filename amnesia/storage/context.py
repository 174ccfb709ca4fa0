"""What every stage gets besides its config: where the run's artifacts go, the store, the lineage."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from amnesia.core.settings import Settings
from amnesia.core.settings import settings as default_settings
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.layout import run_root
from amnesia.storage.lineage import Lineage
from amnesia.storage.sealing import run_key_id


@dataclass
class RunContext:
    pipeline_run_id: str
    root: str  # s3://bucket/runs/<pipeline_run_id> (or a local folder)
    store: ArtifactStore
    lineage: Lineage | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("amnesia"))

    @classmethod
    def create(
        cls,
        pipeline_run_id: str,
        store_root: str | None = None,
        settings: Settings | None = None,
        track: bool = True,
        experiment: str | None = None,
    ) -> RunContext:
        ensure_log_output()
        s = settings or default_settings()
        base = store_root or f"s3://{s.bucket}"
        lineage = Lineage(pipeline_run_id, experiment=experiment, settings=s) if track else None
        if lineage is not None:  # before the stage writes anything: no outputs without their lineage
            lineage.check_reachable()
        # Personal files this run writes are sealed with its own data key (purged with it).
        store = ArtifactStore(s, seal_key=run_key_id(pipeline_run_id))
        return cls(pipeline_run_id, run_root(base, pipeline_run_id), store, lineage)


def ensure_log_output() -> None:
    """A component's process (kfp.local task, pod) has no logging set up: without a handler the stages'
    INFO lines, progress included, would be dropped. The CLI sets its own; this adds one only if none."""
    logger = logging.getLogger("amnesia")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
