"""`lensops tune`: a Ray Tune search over `tune.space` with ASHA early stopping.

Every trial is a full Ray Train run (the same loop, datasets and scaling as `lensops train`)
inside a Tune trial, logged as an MLflow child run of one parent run. ASHA stops trials whose
validation accuracy trails the others at each rung. The parent run gets the best config, its
metrics and a table of all trials. Tuning registers nothing: train the winner with
`lensops train -S key=value ...` (the command is printed and logged).
"""

from __future__ import annotations

import difflib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray.train import UserCallback

from data.figures import pyplot, save
from lensops.core import tags as T
from lensops.core.compute import ensure_ray
from lensops.core.registry import Registry, who
from lensops.core.settings import Settings, SettingsError

from .tracking import as_params
from .trainer import TrainingError, build_trainer, load_training_data, scaling_config

SAMPLERS = {"choice": 1, "uniform": 2, "loguniform": 2, "randint": 2, "grid": 1}
OBJECTIVE = "val_accuracy"


@dataclass
class TuneResult:
    parent_run_id: str
    best_config: dict[str, Any]
    best_metrics: dict[str, float]
    trials: pd.DataFrame
    command: str


def search_space(settings: Settings) -> dict[str, Any]:
    """`tune.space` as Ray Tune samplers; every key and sampler is checked before anything starts."""
    from ray import tune

    space = {}
    for key, spec in settings.tune.space.items():
        if len(spec) != 1:
            raise SettingsError(f"tune.space.{key}: give exactly one sampler ({', '.join(SAMPLERS)}), got {list(spec)}")
        ((sampler, args),) = spec.items()
        if sampler not in SAMPLERS:
            close = difflib.get_close_matches(sampler, SAMPLERS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"samplers: {', '.join(SAMPLERS)}"
            raise SettingsError(f"tune.space.{key}: unknown sampler {sampler!r} ({hint})")
        if sampler in ("choice", "grid"):
            if not args:
                raise SettingsError(f"tune.space.{key}: {sampler} needs a non-empty list of values")
            examples = list(args)
        else:
            if len(args) != 2:
                raise SettingsError(f"tune.space.{key}: {sampler} needs [low, high], got {args}")
            examples = list(args)
        for value in examples:  # each value must make valid settings (catches typos in keys too)
            try:
                settings.updated({key: value})
            except SettingsError as e:
                raise SettingsError(f"tune.space.{key} = {value!r}: {e}") from None
        space[key] = {
            "choice": lambda a: tune.choice(a),
            "grid": lambda a: tune.grid_search(a),
            "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(*a),
        }[sampler](list(args))
    if not space:
        raise SettingsError(
            "tune.space is empty; declare at least one key to search, e.g. train.lr: {loguniform: [0.0005, 0.01]}"
        )
    return space


class _LogEpochs(UserCallback):
    """Runs in the trial's Ray Train controller: each epoch's metrics go to the trial's MLflow run."""

    def __init__(self, registry: Registry, run_id: str):
        self.registry, self.run_id = registry, run_id

    def after_report(self, run_context, metrics, checkpoint):
        self.registry.log_epoch(self.run_id, dict(metrics[0]), synchronous=True)


def _trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    root: str,
    registry: Registry,
    parent_run_id: str,
    experiment_id: str,
    max_epochs: int,
) -> None:
    """One Tune trial: a child MLflow run and a Ray Train run with the sampled settings."""
    from ray import tune
    from ray.train import RunConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    settings = Settings.model_validate(base)
    settings._root = Path(root)
    settings = settings.updated({**config, "train.epochs": max_epochs})
    data = load_training_data(settings)
    client, context = registry.client(), tune.get_context()
    tags = {
        "mlflow.parentRunId": parent_run_id,
        T.STAGE: "tune-trial",
        T.TUNE_TRIAL_ID: context.get_trial_id(),
        T.TUNE_SAMPLED: ", ".join(f"{k}={v}" for k, v in config.items()),
    }
    run_id = client.create_run(experiment_id, run_name=context.get_trial_name(), tags=tags).info.run_id
    client.log_batch(run_id, params=as_params(settings.model_dump(mode="json", by_alias=True)))
    run_config = RunConfig(
        name=f"{parent_run_id}-{context.get_trial_id()}",
        storage_path=str(settings.path("ray_results") / "tune"),
        callbacks=[TuneReportCallback(), _LogEpochs(registry, run_id)],
    )
    trainer = build_trainer(settings, data, run_config)
    try:
        trainer.fit()
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)


def tune_command_line(best: dict[str, Any]) -> str:
    return "lensops train " + " ".join(
        f"-S {k}={v!r}" if isinstance(v, str) else f"-S {k}={v}" for k, v in best.items()
    )


def tune(settings: Settings, *, progress: bool = True) -> TuneResult:
    space = search_space(settings)
    data = load_training_data(settings)  # fails fast on a missing dataset or a bad augmentation
    ensure_ray()
    scaling_config(settings)  # fails fast on use_gpu without GPUs
    registry = Registry.of(settings)
    experiment_id = registry.experiment_id(settings.registry.experiment)
    parent_id = _open_parent(registry, settings, experiment_id, data.classes)
    tuner = _tuner(settings, space, registry, parent_id, experiment_id, progress=progress)
    client = registry.client()
    try:
        grid = tuner.fit()
    except BaseException:
        client.set_terminated(parent_id, status="FAILED")
        raise
    trials = _trial_table(grid, list(space))
    if trials.dropna(subset=[OBJECTIVE]).empty:
        client.set_terminated(parent_id, status="FAILED")
        errors = [str(r.error)[:300] for r in grid if r.error]
        raise TrainingError("no trial reported a result" + (f"; first error: {errors[0]}" if errors else ""))
    _settle_trial_runs(client, parent_id, experiment_id, trials, settings.tune.max_epochs)
    result = _best(grid, trials, list(space), parent_id)
    _log_outcome(client, result, grid)
    return result


def _open_parent(registry: Registry, settings: Settings, experiment_id: str, classes: list[str]) -> str:
    """The sweep's MLflow run: the tune settings as params; every trial is its child."""
    client = registry.client()
    parent = client.create_run(
        experiment_id,
        run_name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={T.STAGE: "tune", T.ACTOR: who()},
    )
    parent_id = parent.info.run_id
    client.log_batch(parent_id, params=as_params({"tune": settings.tune.model_dump(mode="json")}))
    client.log_dict(parent_id, {"classes": classes}, "classes.json")
    return parent_id


def _tuner(settings: Settings, space, registry: Registry, parent_id: str, experiment_id: str, *, progress: bool):
    """A Tuner whose trials are Ray Train runs, stopped early by ASHA."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    cfg = settings.tune
    trainable = ray_tune.with_parameters(
        _trial,
        base=settings.model_dump(mode="json", by_alias=True),
        root=str(settings.root),
        registry=registry,
        parent_run_id=parent_id,
        experiment_id=experiment_id,
        max_epochs=cfg.max_epochs,
    )
    # The trial's own process only waits on its Ray Train run: it needs next to no CPU.
    trainable = ray_tune.with_resources(trainable, {"CPU": 0.01})
    grace = min(cfg.grace_period, cfg.max_epochs)
    return ray_tune.Tuner(
        trainable,
        param_space=space,
        tune_config=ray_tune.TuneConfig(
            metric=OBJECTIVE,
            mode="max",
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=cfg.max_epochs, grace_period=grace),
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent,
            reuse_actors=False,  # a fresh process per trial: Ray Train state does not carry over between trials
        ),
        run_config=ray_tune.RunConfig(
            name=parent_id,
            storage_path=str(settings.path("ray_results") / "tune"),
            verbose=1 if progress else 0,
        ),
    )


def _best(grid, trials: pd.DataFrame, keys: list[str], parent_id: str) -> TuneResult:
    best_result = grid.get_best_result(metric=OBJECTIVE, mode="max", scope="all")
    best_config = {k: best_result.config[k] for k in keys}
    wanted = ("val_accuracy", "val_loss", "train_loss", "train_accuracy", "best_val_accuracy")
    best_metrics = {k: float(v) for k, v in best_result.metrics.items() if k in wanted}
    best_metrics["best_val_accuracy"] = float(trials[OBJECTIVE].max())
    return TuneResult(parent_id, best_config, best_metrics, trials, tune_command_line(best_config))


def _log_outcome(client, result: TuneResult, grid) -> None:
    """The best config, its metrics, the trials table and chart, and the winner's command, on the parent run."""
    parent_id = result.parent_run_id
    for key, value in result.best_metrics.items():
        client.log_metric(parent_id, key if key.startswith("best_") else f"best_{key}", value)
    summary = {"best_config": result.best_config, "metrics": result.best_metrics, "command": result.command}
    client.log_dict(parent_id, summary, "best_config.json")
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "trials.csv"
        result.trials.to_csv(table, index=False)
        client.log_artifact(parent_id, str(table))
        client.log_artifact(parent_id, str(_plot_trials(grid, Path(scratch) / "trials.png")))
    client.set_tag(parent_id, T.TUNE_BEST_COMMAND, result.command)
    client.set_terminated(parent_id)


def _trial_table(grid, keys: list[str]) -> pd.DataFrame:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        row = {k: result.config.get(k) for k in keys}
        row.update(
            {
                "trial": metrics.get("trial_id", Path(result.path).name if result.path else ""),
                "epochs": metrics.get("training_iteration", 0),
                OBJECTIVE: (
                    max(result.metrics_dataframe[OBJECTIVE])
                    if result.metrics_dataframe is not None and OBJECTIVE in result.metrics_dataframe
                    else None
                ),
                "error": str(result.error)[:200] if result.error else "",
            }
        )
        rows.append(row)
    return pd.DataFrame(rows).sort_values(OBJECTIVE, ascending=False, na_position="last", ignore_index=True)


def _settle_trial_runs(client, parent_id: str, experiment_id: str, trials: pd.DataFrame, max_epochs: int) -> None:
    """End every trial's MLflow run as Tune saw the trial end.

    Tune ends a trial by stopping its process, both when ASHA cuts it and when it reaches
    max_epochs, so the run may still read RUNNING, or FAILED where the stop interrupted Ray Train
    first. A trial Tune recorded no error for did not fail: short of max_epochs, ASHA stopped it.
    """
    outcome = {str(row.trial): row for row in trials.itertuples()}
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    for run in children:
        run_id, trial = run.info.run_id, outcome.get(run.data.tags.get(T.TUNE_TRIAL_ID, ""))
        if run.info.status == "FINISHED" or (trial is not None and trial.error):
            continue
        if trial is not None and trial.epochs >= max_epochs:
            client.set_terminated(run_id, status="FINISHED")
            continue
        if trial is not None:
            client.set_tag(run_id, T.TUNE_STOPPED_BY, "ASHA")
        client.set_terminated(run_id, status="KILLED")


def _plot_trials(grid, path: Path) -> Path:
    """Validation accuracy per epoch for every trial: where ASHA cut each one off."""
    fig, ax = pyplot().subplots(figsize=(6, 3.6), dpi=110)
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or OBJECTIVE not in frame:
            continue
        label = ", ".join(
            f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in result.config.items()
        )
        ax.plot(frame["training_iteration"], frame[OBJECTIVE], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel=OBJECTIVE, title="trials (a line that ends early was stopped by ASHA)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return save(fig, path)
