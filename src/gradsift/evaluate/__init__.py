"""Evaluate attribution on your own model: LDS, leave-one-out, FastIF recall.

- :func:`linear_datamodeling_score` — retrain on seeded random subsets with your
  ``train_fn(keep, seed) -> test outputs`` (resumable, parallel over processes) and
  correlate subset sums of the scores with the outputs; :func:`lds_from_outputs` when the
  retraining is done already.
- :func:`leave_one_out` / :func:`loo_agreement` — for small convex models.
- :func:`fastif_recall` — recall of the full method's top-m by a FastIF result.

``gradsift validate`` renders these (with a report section,
:mod:`gradsift.report.validation`) from saved arrays.
"""

from gradsift.evaluate.lds import (
    LDSResult,
    lds_from_outputs,
    linear_datamodeling_score,
    subset_masks,
)
from gradsift.evaluate.loo import LOOResult, leave_one_out, loo_agreement
from gradsift.evaluate.recall import fastif_recall
from gradsift.evaluate.retrain import TrainFn, run_retrains

__all__ = [
    "LDSResult",
    "LOOResult",
    "TrainFn",
    "fastif_recall",
    "lds_from_outputs",
    "leave_one_out",
    "linear_datamodeling_score",
    "loo_agreement",
    "run_retrains",
    "subset_masks",
]
