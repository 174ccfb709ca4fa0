"""The settings search's components (the fan-out on a cluster, cluster.search_parallel): their contracts. The
kfp.local run of the DAG they make is in tests/test_search.py."""

from components.search import search_choose, search_plan, search_trial

PIPELINE_PARAMETERS = {"config_json", "pipeline_run_id", "store_root", "model_config", "evaluate_config",
                       "gate_config", "original_uri"}  # fmt: skip


def test_a_trial_reads_only_its_item_and_the_pipeline_s_parameters() -> None:
    """kfp.local 2.17 hands a ParallelFor's task the loop item in place of every other task's output it reads
    (checked: the split arrived as the item), so the trial's item carries the start model, split, trace and
    plan, and the task takes nothing else from upstream tasks."""
    assert set(search_trial.component_spec.inputs) == PIPELINE_PARAMETERS | {"item"}
    assert set(search_trial.component_spec.outputs) == {"Output"}


def test_plan_and_choose_take_the_upstream_outputs_and_one_output_each() -> None:
    """A round's items are the plan's single output (kfp.local iterates a loop over a task's `Output` only)."""
    upstream = {"model_uri", "split_json", "trace_json", "plan_json"}
    assert set(search_plan.component_spec.inputs) == PIPELINE_PARAMETERS | upstream | {
        "round_number", "told", "first_items"}  # fmt: skip
    assert set(search_choose.component_spec.inputs) == PIPELINE_PARAMETERS | upstream | {
        "first", "last", "first_items", "parallel"}  # fmt: skip
    assert set(search_plan.component_spec.outputs) == set(search_choose.component_spec.outputs) == {"Output"}
