"""Stage 1 component: erasure requests into validated forget / retain / MIA sets."""

from kfp import dsl

from components import amnesia_component


@amnesia_component
def split(config_json: str, pipeline_run_id: str, store_root: str, splits: dsl.Output[dsl.Dataset]) -> str:
    """Runs amnesia.split.run_split; returns the SplitResult JSON and describes the stored sets."""
    from amnesia.config import SplitConfig
    from amnesia.context import RunContext
    from amnesia.handoff import describe
    from amnesia.split import run_split

    result = run_split(SplitConfig.model_validate_json(config_json), RunContext.create(pipeline_run_id, store_root))
    return describe(splits, result, result.uri, result.digest)
