"""Honest trimming experiments: does removing the flagged samples beat removing random ones?

For every seed, the same seeded :class:`Recipe` (model, optimiser, epochs, batch size) is
trained on

- the full training set (``none``),
- the training set without the top-ranked samples of each ranking, at each budget,
- the training set without the same *number* of uniformly random samples (``random``),
- the training set without exactly the known flipped samples (``oracle``), when known.

Each run records the validation accuracy and the clean test accuracy of the model at the
recipe's epoch (the final one, or the best-validation one). The budget of each method is
chosen by :func:`choose_budgets`, which only ever receives a :class:`ValidationRuns`
(validation accuracies; test numbers are not part of it), and test accuracy is reported as
mean ± std over seeds at that budget and as a full curve.

Runs are independent jobs: they run in a process pool (``TrimConfig.n_jobs``) and each
finished run is cached on disk under a hash of (recipe, seed, removed indices, data), so an
interrupted experiment resumes where it stopped.

Modules: :mod:`.recipe` (:class:`Recipe`, :class:`TrimConfig`), :mod:`.jobs` (planning),
:mod:`.cache` (the run cache), :mod:`.pool` (one run, the process pool), :mod:`.budget`
(:class:`ValidationRuns`, :func:`choose_budgets`), :mod:`.summary` (statistics,
:class:`TrimResult`), :mod:`.pipeline` (:func:`run_trim_experiment`, :func:`trim_dataset`).
Reports: :mod:`gradsift.report.trimming`.
"""

from gradsift.experiments.trimming.budget import ValidationRuns, choose_budgets
from gradsift.experiments.trimming.cache import data_fingerprint, default_cache_dir, run_key
from gradsift.experiments.trimming.jobs import TrimJob, plan_jobs, random_removal, top_ranked
from gradsift.experiments.trimming.pipeline import (
    DEFAULT_DATASET_KWARGS,
    TrimPipelineResult,
    run_trim_experiment,
    trim_dataset,
)
from gradsift.experiments.trimming.pool import train_run
from gradsift.experiments.trimming.recipe import (
    DEFAULT_BUDGETS,
    DEFAULT_RECIPES,
    Recipe,
    TrimConfig,
    recipe_for,
)
from gradsift.experiments.trimming.summary import TrimResult, summary_markdown

__all__ = [
    "DEFAULT_BUDGETS",
    "DEFAULT_DATASET_KWARGS",
    "DEFAULT_RECIPES",
    "Recipe",
    "TrimConfig",
    "TrimJob",
    "TrimPipelineResult",
    "TrimResult",
    "ValidationRuns",
    "choose_budgets",
    "data_fingerprint",
    "default_cache_dir",
    "plan_jobs",
    "random_removal",
    "recipe_for",
    "run_key",
    "run_trim_experiment",
    "summary_markdown",
    "top_ranked",
    "train_run",
    "trim_dataset",
]
