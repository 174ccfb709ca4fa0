"""The settings search fanned out (a cluster's DAG with cluster.search_parallel): plan a round, run one trial,
choose. Locally the search runs inside the unlearn component instead (unless the run config sets it too).
Each has a single output: kfp.local iterates a ParallelFor over a task's `Output` only."""


from components import amnesia_component


@amnesia_component
def search_plan(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    model_uri: str,
    model_config: str,
    split_json: str,
    trace_json: str,
    evaluate_config: str,
    gate_config: str,
    plan_json: str,
    original_uri: str,
    round_number: int,
    told: list[str],
    first_items: list[str],
) -> list[str]:
    """amnesia.runtime.tasks.search_plan: one round's trials, each item carrying what its task needs (round 1
    also makes the base evaluation every trial reads); told: the earlier round's trial records."""
    from amnesia.runtime import tasks

    return tasks.search_plan(
        config_json, pipeline_run_id, store_root, model_uri, model_config, split_json, trace_json, evaluate_config,
        gate_config, plan_json, original_uri, round_number, told, first_items,
    )  # fmt: skip


@amnesia_component
def search_trial(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    model_config: str,
    evaluate_config: str,
    gate_config: str,
    original_uri: str,
    item: str,
) -> str:
    """amnesia.runtime.tasks.search_trial: one trial (pruned against the trials told); its record as JSON. The
    item carries the upstream outputs it reads (the start model, split, trace, plan)."""
    from amnesia.runtime import tasks

    return tasks.search_trial(
        config_json, pipeline_run_id, store_root, model_config, evaluate_config, gate_config, original_uri, item
    )


@amnesia_component
def search_choose(
    config_json: str,
    pipeline_run_id: str,
    store_root: str,
    model_uri: str,
    model_config: str,
    split_json: str,
    trace_json: str,
    evaluate_config: str,
    gate_config: str,
    plan_json: str,
    original_uri: str,
    first: list[str],
    last: list[str],
    first_items: list[str],
    parallel: int,
) -> str:
    """amnesia.runtime.tasks.search_choose: the attacks on the best trials, the choice, the table and lineage;
    the SearchResult JSON the unlearn task runs ("" without unlearn.search)."""
    from amnesia.runtime import tasks

    return tasks.search_choose(
        config_json, pipeline_run_id, store_root, model_uri, model_config, split_json, trace_json, evaluate_config,
        gate_config, plan_json, original_uri, first, last, first_items, parallel,
    )  # fmt: skip
