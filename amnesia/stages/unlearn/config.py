"""Stage 3's config: the training loop's settings, with the method's own settings beside it.

Each method brings its config class (`Method.config_cls`, as trl puts a config beside each trainer);
`method_args` is validated against it here, so a typo in a method's argument fails at load, naming
`unlearn.method_args.<field>`, like every other config error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from amnesia.core.config import StrictModel, describe_error
from amnesia.science.unlearning.methods.config import MethodConfig
from amnesia.stages.search.config import SearchConfig, check_space


class AdapterConfig(StrictModel):
    """LoRA (peft) on the selection's Linear modules: the adapters train, the weights stay; saved merged."""

    kind: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, description="r: the rank of each module's update B·A.")
    alpha: float = Field(16.0, gt=0, description="The update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input while training.")
    modules: list[str] | None = Field(
        None,
        description="Adapt only the selected Linear modules with these last names (e.g. [down_proj]); "
        "default: every Linear module the selection (target, layers) holds.",
    )


class UnlearnConfig(StrictModel):
    method: str = Field("sha256", description="A registered method: amnesia.science.unlearning.methods.METHODS.")
    method_args: dict[str, Any] = Field(default_factory=dict, description="The method's config (validated).")
    # What trains: only the chosen layers' parts; everything else is frozen.
    target: Literal["mlp", "attn", "layer", "regex"] = "mlp"
    param_regex: str | None = Field(None, description="With target: regex, parameter names to train (re.search).")
    layers: list[int] | None = Field(None, description="Explicit layers; default: the trace stage's choice.")
    adapter: AdapterConfig | None = Field(
        None,
        description="Train LoRA adapters on the selected modules instead of their weights (any method); the "
        "candidate is saved with the adapters merged, an ordinary model.",
    )
    # Data.
    prompt_format: Literal["raw", "chat"] = Field("raw", description="raw = the official scorer's prompts.")
    max_length: int = Field(512, ge=8, description="Longer items are refused, naming the id.")
    retain_eos: bool = Field(
        True,
        description="End retain outputs with EOS (the chat template's end of turn under chat). Right for a model "
        "trained to stop after an answer (the demo's, SemEval's); off for a pretrained model prompted raw, "
        "which goes on after an answer: EOS there is a token it never predicts, and training it in hurts.",
    )
    forget_eos: bool = Field(
        False,
        description="Count the EOS after a forget output as a forget token. Off: EOS is not the record's "
        "content, and pushing it down on forget items makes the model run on after retain answers too.",
    )
    # Optimisation.
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Forget items per micro-batch.")
    retain_batch_size: int | None = Field(None, ge=1, description="Retain items per micro-batch (default batch_size).")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = Field(0, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 else.")
    gradient_checkpointing: bool = False
    # Several processes (one per GPU). The batch above is global: a step's grad_accum micro-batches
    # are dealt out across the processes, so the result does not depend on how many there are.
    processes: int | Literal["auto"] = Field(
        1,
        description="Processes to run (torchrun, on this machine) when not already started under torchrun; "
        "auto: one per visible GPU. Set grad_accum to a multiple of it, or some processes idle.",
    )
    strategy: Literal["fsdp", "ddp"] = Field(
        "fsdp",
        description="With several processes: fsdp shards the trained modules' weights, gradients and AdamW "
        "state (FSDP2); ddp keeps a whole copy on each. The frozen rest is replicated either way.",
    )
    # Held-out evaluation, best checkpoint, early stop.
    eval_every: int = Field(10, ge=1, description="Optimizer steps between held-out evaluations.")
    keep: Literal["best", "last"] = Field(
        "best",
        description="best: the lowest held-out joint loss (as SHA256) among evaluations meeting the forget target.",
    )
    early_stop_forget_exact: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Stop once at most this share of forget items is still reproduced exactly "
        "(teacher-forced argmax = what greedy decoding returns); None: never stop early.",
    )
    early_stop_per_document: float | None = Field(
        None,
        ge=0,
        le=1,
        description="With early_stop_forget_exact: also wait until no forgotten document (one person's record "
        "set) has more than this share of its items still reproduced exactly. The gate checks each request; an "
        "average met while one person is still almost whole is not a reason to stop. None: the average only.",
    )
    # Checkpoints (S3): what a retried or killed run resumes from.
    checkpoint_every: int = Field(20, ge=1, description="Optimizer steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = True
    # The settings search: try settings on this run's data and keep those that clear the gate widest.
    search: SearchConfig | None = Field(
        None, description="Search the settings (lr and the method's knobs) against the gate before unlearning.",
    )  # fmt: skip

    @field_validator("method")
    @classmethod
    def _known(cls, name: str) -> str:
        from amnesia.science.unlearning.methods import method_class

        method_class(name)
        return name

    @field_validator("method_args")
    @classmethod
    def _args(cls, args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "method" in info.data:  # else the method's own error is reported
            _validate_args(info.data["method"], args)
        return args

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "device" in data:
            raise ValueError("'device' moved to the run config's model.device (one setting for every stage)")
        return data

    @field_validator("processes")
    @classmethod
    def _processes(cls, n: int | str) -> int | str:
        if isinstance(n, int) and n < 1:
            raise ValueError("at least 1 (or auto)")
        return n

    @model_validator(mode="after")
    def _check(self) -> UnlearnConfig:
        if (self.target == "regex") != (self.param_regex is not None):
            raise ValueError("param_regex goes with target: regex, and target: regex needs param_regex")
        if self.search is not None:
            from amnesia.science.unlearning.methods import method_class

            cls = method_class(self.method)
            check_space(self.search.space_for(cls.search_space), cls.config_cls.model_fields)
        return self

    def with_settings(self, params: dict[str, Any]) -> UnlearnConfig:
        """This config with a trial's settings ('lr', 'method_args.alpha', ...) and no search: what runs."""
        top = {k: v for k, v in params.items() if not k.startswith("method_args.")}
        args = dict(self.method_args) | {k.removeprefix("method_args."): v for k, v in params.items() if k not in top}
        return UnlearnConfig.model_validate(self.model_dump() | top | {"method_args": args, "search": None})

    def method_config(self) -> MethodConfig:
        return _validate_args(self.method, self.method_args)


def _validate_args(method: str, args: dict[str, Any]) -> MethodConfig:
    """The method's config from method_args; errors name the field inside method_args."""
    from amnesia.science.unlearning.methods import method_class

    try:
        return method_class(method).config_cls.model_validate(args)
    except ValidationError as err:
        raise ValueError(describe_error(err, "").lstrip(": ")) from None
