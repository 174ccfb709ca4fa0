"""The run config of the whole pipeline: one YAML file with a section per stage (each validated by the
stage's own model), the base model, the registered model's name, and the cluster settings."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from amnesia.core.config import HistoryConfig, ModelConfig, StoreConfig, StrictModel
from amnesia.runtime.cluster_config import ClusterConfig
from amnesia.stages.evaluate.config import EvaluateConfig
from amnesia.stages.gate.config import GateConfig
from amnesia.stages.split.config import SplitConfig
from amnesia.stages.trace.config import TraceConfig
from amnesia.stages.unlearn.config import UnlearnConfig
from amnesia.storage.layout import CONFIG_SECTIONS


class PipelineConfig(StrictModel):
    name: str = Field("amnesia", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$", description="Run id prefix.")
    experiment: str = Field("selective-amnesia", min_length=1)
    model: ModelConfig = Field(
        description="The base model: a URI (s3:// folder, local folder, hub id) or a section with uri, dtype, "
        "device, attn_implementation, trust_remote_code, device_map (amnesia.core.config.ModelConfig)."
    )
    model_name: str = Field("amnesia-model", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,120}$",
                            description="Registered model name in MLflow.")  # fmt: skip
    store: StoreConfig = StoreConfig()
    split: SplitConfig
    trace: TraceConfig = TraceConfig()
    unlearn: UnlearnConfig = UnlearnConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    history: HistoryConfig = HistoryConfig()
    cluster: ClusterConfig = ClusterConfig()

    @field_validator("model")
    @classmethod
    def _model_uri(cls, model: ModelConfig) -> ModelConfig:
        if not model.uri:
            raise ValueError("uri: the base model is required (a local folder, an s3:// folder or a hub id)")
        return model

    @model_validator(mode="after")
    def _gate_measurable(self) -> PipelineConfig:
        problem = self.gate.unmeasured(self.evaluate)
        if problem:
            raise ValueError(f"gate.{problem}")
        return self

    def store_root(self, bucket: str) -> str:
        return self.store.root or f"s3://{bucket}"

    def arguments(self, pipeline_run_id: str, store_root: str, request_digest: str = "") -> dict[str, str | int]:
        """The pipeline's parameters for one run (configs as JSON strings)."""
        return {
            "pipeline_run_id": pipeline_run_id,
            "store_root": store_root,
            "model_uri": self.model.uri,
            "model_config": self.model.model_dump_json(exclude={"uri"}),
            "model_name": self.model_name,
            **{f"{s}_config": getattr(self, s).model_dump_json() for s in CONFIG_SECTIONS},  # one per stage section
            "request_digest": request_digest,
            "retention_days": -1 if self.store.retention_days is None else self.store.retention_days,
            "history_config": self.history.model_dump_json(),
        }
