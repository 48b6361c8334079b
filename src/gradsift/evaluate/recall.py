"""FastIF recall against full influence: :func:`fastif_recall` (see also
:func:`gradsift.influence.fastif.compare_with_full`, which also times both)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradsift.influence.fastif import FastIFResult
from gradsift.influence.neighbors import recall_at_k

__all__ = ["fastif_recall"]


def fastif_recall(
    result: FastIFResult,
    full_scores: np.ndarray,
    tops: Sequence[int] = (10, 100),
) -> dict[str, float]:
    """Mean recall of the full method's top-m helpful and harmful training rows.

    ``full_scores`` float ``[n, m_test]`` are the full influence scores (positive =
    helpful) of the same test points. Keys ``helpful@m`` and ``harmful@m``.
    """
    order = np.argsort(-full_scores, axis=0, kind="stable").T  # [m_test, n] most helpful first
    out = {}
    for m in tops:
        out[f"helpful@{m}"] = recall_at_k(result.helpful(m)[0], order[:, :m])
        out[f"harmful@{m}"] = recall_at_k(result.harmful(m)[0], order[:, ::-1][:, :m])
    return out
