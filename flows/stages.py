"""Run one stage the same way everywhere: skip if committed, map parts, finalize, commit.

The plain functions that do the work live in tasks/; this module only turns them into
Prefect task runs (one per part, so Dask/Ray/Kubernetes can spread them), shows progress
and refuses to finalize a stage while any of its parts failed. Finished parts stay marked
in storage, so a rerun does only what is missing.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from flows.runner import active_task_runner, max_parts_in_flight
from storage.commit import begin_stage, config_digest
from storage import uri as storage_uri
from storage.config import StorageConfig
from lvd.errors import LvdError

M = TypeVar("M")



class StageFailed(LvdError, RuntimeError):
    """Some parts of a stage failed; the finished ones are kept for the rerun."""


def use_storage(cfg: StorageConfig, check: bool | None = None) -> StorageConfig:
    """The one storage resolution of every flow: a value the parameters set wins, then the worker's
    environment (LVD_ROOT, LVD_S3_*, AWS_*), then the default. "Set" means named in the parameters
    (pydantic's ``model_fields_set``), so a root spelled equal to the default still wins over LVD_ROOT.
    A null is never a value: the UI form and a full ``model_dump`` send ``endpoint_url: null`` for "not
    given", which must not hide the worker's LVD_S3_ENDPOINT_URL. Flows must use the returned settings,
    never ``cfg`` itself.

    Inside a flow run (or with ``check=True``) the root must also take a probe write, so a root that
    cannot be written fails the run before any work, naming the root and the reason."""
    named = {k: v for k, v in cfg.model_dump(include=cfg.model_fields_set).items() if v is not None}
    effective = StorageConfig.from_env(**named)
    storage_uri.configure(effective, export_env=True)
    storage_uri.clear_fs_cache()
    if check is None:
        check = FlowRunContext.get() is not None  # resolving settings alone (tests, the CLI) touches nothing
    if check:
        storage_uri.check_root_writable(effective.root)
    return effective


def with_effective_storage(cfg: M) -> M:
    """A flow's parameters with ``storage`` replaced by what `use_storage` resolves."""
    return cfg.model_copy(update={"storage": use_storage(cfg.storage)})


def prefect_task(fn: Callable, name: str, retries: int = 0, tags: Sequence[str] = ()):
    """A Prefect task around a plain function; results are small summaries, so no caching."""
    return task(fn, name=name, retries=retries, retry_delay_seconds=5, cache_policy=NONE,
                persist_result=False, tags=list(tags))


def in_callers_store(run_part: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """`run_part` that uses the caller's storage settings in whatever process runs it (a Dask worker
    has its own, taken from its environment when it started)."""
    storage = storage_uri.current_config()

    def run(part: Any) -> dict:
        storage_uri.configure(storage)
        return run_part(part)

    return run


def submit_part(part_task, part: Any):
    """On the runner `flows.runner.use_task_runner` started for this run, else on the flow's own."""
    runner = active_task_runner()
    if runner is None:
        return part_task.submit(part)
    return runner.submit(part_task, parameters={"part": part})


def map_parts(
    stage: str,
    parts: list,
    run_part: Callable[[Any], dict],
    part_label: Callable[[Any], str] = str,
    part_retries: int = 1,
) -> list[dict]:
    """One Prefect task run per part on the flow's task runner; progress as an artifact.

    Every part runs to its end even when others fail; then all failures are raised together,
    while the finished parts stay marked done in storage for the rerun. At most the runner's
    ``max_parts_in_flight`` parts are submitted at a time, so a stage of 10,000 parts holds no
    more futures, queued inputs or worker processes than one of ten.
    """
    part_task = prefect_task(in_callers_store(run_part), name=f"{stage}-part", retries=part_retries,
                             tags=[f"lvd-{stage}"])
    progress = create_progress_artifact(progress=0.0, description=f"{stage}: parts finished")
    bound = max_parts_in_flight() or len(parts) or 1
    summaries: list[dict | None] = [None] * len(parts)
    failures: list[str] = []
    waiting = iter(enumerate(parts))
    running: dict[int, tuple[int, Any]] = {}  # id(future) -> (part index, future)

    def submit_more() -> None:  # keep at most `bound` parts submitted: memory stays flat in the parts
        for i, part in waiting:
            future = submit_part(part_task.with_options(task_run_name=f"{stage}-{part_label(part)}"), part)
            running[id(future)] = (i, future)
            if len(running) >= bound:
                return

    submit_more()
    finished = 0
    while running:
        future = next(as_completed([f for _, f in running.values()]))
        i, _ = running.pop(id(future))
        try:
            summaries[i] = future.result()
        except Exception as err:  # a failed part is reported with the others, never hides them
            failures.append(f"{part_label(parts[i])}: {type(err).__name__}: {err}")
        finished += 1
        update_progress_artifact(progress, progress=100.0 * finished / max(len(parts), 1))
        submit_more()
    if failures:
        raise StageFailed(
            f"{stage}: {len(failures)} of {len(parts)} parts failed; finished parts are kept for the rerun:\n  "
            + "\n  ".join(failures[:10])
        )
    return summaries


def run_stage(
    *,
    stage: str,
    stage_uri: str,
    config: Any,
    input_digest: str,
    parts: list,
    run_part: Callable[[Any], dict],
    finalize: Callable[[list[dict]], dict],
    part_label: Callable[[Any], str] = str,
    part_retries: int = 1,
) -> dict:
    """Run `stage` into `stage_uri` and return its commit record.

    `run_part(part)` must be idempotent (it returns the stored summary of a part that is
    already done); `finalize(summaries)` merges the parts and commits the stage.
    """
    logger = get_run_logger()
    digest = config_digest(config)
    plan = begin_stage(stage_uri, stage=stage, config_digest=digest, input_digest=input_digest, config=config)
    if plan.skip:
        logger.info("%s: committed with the same config and input, skipping (%s)", stage, stage_uri)
        return plan.commit
    logger.info("%s: %d parts, %d already done from an earlier run", stage, len(parts), len(plan.done))
    summaries = map_parts(stage, parts, run_part, part_label, part_retries)
    commit = prefect_task(finalize, name=f"{stage}-finalize")(summaries)
    logger.info("%s committed: %s", stage, commit.get("counts"))
    return commit
