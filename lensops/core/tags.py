"""The MLflow tag keys that carry verdicts, links and lineage between stages.

Every writer and every reader uses these constants, never a string literal. One naming scheme:

- `lensops.<fact>`: a fact about the object that carries the tag (its stage, who ran it, its
  lineage, a version's training run and test accuracy);
- `lensops.<step>.<fact>`: the outcome of a step (`review`, `drift`, `retrain`, `tune`), or of
  an alias move (`lensops.<alias>.set_by`, see `alias_tag`);
- `lensops.link.<what>`: the id of a related MLflow run, so that a drift run, the retraining it
  triggered, the training run and the version it registered can be walked in both directions;
- `lensops.model.<fact>`: the model version a monitoring or retraining run is about.

Versions and runs written before these names existed carry older keys; `normalize` maps them to
the current ones, so the registry reads old and new versions alike.
"""

from __future__ import annotations

from collections.abc import Mapping

PREFIX = "lensops."

# What every run and version says about itself.
STAGE = "lensops.stage"  # train | tune | tune-trial | drift | retrain
ACTOR = "lensops.actor"  # who ran it: LENSOPS_ACTOR or the OS user

# Lineage: set on the training run and copied onto the version it registers.
GIT_COMMIT = "lensops.git_commit"
DATA_HASH = "lensops.data_hash"  # the DVC hash of data/prepared, as in dvc.lock
PARAMS_HASH = "lensops.params_hash"
# What the model was trained from, compared by `lensops retrain` (see lensops.core.fingerprint).
RAW_HASH = "lensops.raw_hash"  # the DVC hash of data/raw
CODE_HASH = "lensops.code_hash"
TRAINING_PARAMS_HASH = "lensops.training_params_hash"
LINEAGE = (GIT_COMMIT, DATA_HASH, PARAMS_HASH, RAW_HASH, CODE_HASH, TRAINING_PARAMS_HASH)

# On a version: what it scored when it was registered.
TEST_ACCURACY = "lensops.test_accuracy"
TRAIN_INPUT = "lensops.train.input"  # the input path a run used (train.input, with `auto` decided)

# Links between runs (values are MLflow run ids).
TRAINING_RUN = "lensops.link.training_run"  # a version's training run; a retrain run's training run
RETRAIN_RUN = "lensops.link.retrain_run"  # the retraining that started a training run; a drift run's retraining
DRIFT_RUN = "lensops.link.drift_run"  # the drift run that triggered a retraining

# The model version a drift or retrain run is about.
MODEL_NAME = "lensops.model.name"
MODEL_VERSION = "lensops.model.version"

# The review, on the challenger's version (and its verdict on a retrain run).
REVIEW_VERDICT = "lensops.review.verdict"
REVIEW_AT = "lensops.review.at"
REVIEW_BY = "lensops.review.by"
REVIEW_CHAMPION = "lensops.review.champion"  # the champion version it was compared with ("" for none)
REVIEW_FAILED_GATES = "lensops.review.failed_gates"  # comma-separated gate names
REVIEW_REPORT = "lensops.review.report"  # runs:/ URI of review.html
REVIEW_LIVE = "lensops.review.live"  # with --live: "n=412 agreement=0.981 labelled=40 since=..." ("" without)

# Drift runs.
DRIFT_VERDICT = "lensops.drift.verdict"

# Retrain runs.
RETRAIN_REASON = "lensops.retrain.reason"
RETRAIN_OUTCOME = "lensops.retrain.outcome"
RETRAIN_DETAIL = "lensops.retrain.detail"

# Tune runs and their trials.
TUNE_TRIAL_ID = "lensops.tune.trial_id"
TUNE_SAMPLED = "lensops.tune.sampled"
TUNE_BEST_COMMAND = "lensops.tune.best_command"
TUNE_STOPPED_BY = "lensops.tune.stopped_by"

# Alias moves: `alias_tag("champion", "set_by")` -> "lensops.champion.set_by".
ALIAS_FIELDS = ("set_by", "set_at", "reason")
PROMOTION_VERDICT = "review_verdict"  # alias_tag("champion", PROMOTION_VERDICT): the verdict it was promoted on
PROMOTION_FORCED = "forced"
PROMOTION_LIVE = "review_live"  # alias_tag("champion", PROMOTION_LIVE): the live evidence of that review ("" none)
REPLACED = "replaced"  # alias_tag("champion", REPLACED): the version `previous` ends on after this move


def alias_tag(alias: str, field: str) -> str:
    """The tag recording a move of `alias` onto a version: who, when, why, on what verdict."""
    return f"{PREFIX}{alias}.{field}"


# Keys written before this naming scheme -> their current name.
LEGACY = {
    "lensops.run_id": TRAINING_RUN,
    "lensops.trigger_run_id": RETRAIN_RUN,
    "lensops.retrain_run_id": RETRAIN_RUN,
    "lensops.trigger.drift_run_id": DRIFT_RUN,
    "lensops.training_run_id": TRAINING_RUN,
    "lensops.review_verdict": REVIEW_VERDICT,
    "lensops.drift_verdict": DRIFT_VERDICT,
    "lensops.model_name": MODEL_NAME,
    "lensops.model_version": MODEL_VERSION,
    "lensops.trial_id": TUNE_TRIAL_ID,
    "lensops.sampled": TUNE_SAMPLED,
    "lensops.best_command": TUNE_BEST_COMMAND,
    "lensops.stopped_by": TUNE_STOPPED_BY,
}


def normalize(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags with legacy keys renamed to the current scheme; a current key wins over its legacy twin."""
    renamed = {LEGACY.get(key, key): value for key, value in tags.items() if key in LEGACY}
    return {**renamed, **{key: value for key, value in tags.items() if key not in LEGACY}}


def lensops_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Only lensops' own tags (MLflow's `mlflow.*` and users' tags left out)."""
    return {key: value for key, value in tags.items() if key.startswith(PREFIX)}
