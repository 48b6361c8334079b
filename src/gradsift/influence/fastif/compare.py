"""FastIF against the unrestricted method: :func:`full_influence`, :func:`compare_with_full`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gradsift.distributed.scoring import fold_block
from gradsift.influence.fastif.fastif import FastIF
from gradsift.influence.neighbors import recall_at_k
from gradsift.store.kernels import StreamingTopK

__all__ = ["FastIFComparison", "compare_with_full", "full_influence"]


def full_influence(
    fastif: FastIF, S: torch.Tensor, top: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The unrestricted method: ``s_tᵀ g_i`` for **every** training row, streamed in blocks.

    Uses the same gradients (on demand or precomputed) and solver outputs ``S [m, D]`` as
    ``fastif``. Returns ``((helpful_idx, helpful_scores), (harmful_idx, harmful_scores))``,
    each ``[m, top]`` (int64, float64), best first; never holds an ``n × m`` matrix.
    """
    helpful = StreamingTopK(len(S), top, largest=True)
    harmful = StreamingTopK(len(S), top, largest=False)
    rows = np.arange(fastif.n_train)
    St = S.detach().cpu()
    for start, G in fastif.gradient_blocks(rows, "full influence"):
        scores = G.to(St.dtype) @ St.T  # [b, m]
        fold_block(helpful, scores, start)  # = StreamingTopK.update, pre-filtered by topk
        fold_block(harmful, scores, start)
    (hv, hi), (av, ai) = helpful.result(), harmful.result()
    return (hi, hv), (ai, av)


@dataclass
class FastIFComparison:
    """FastIF against the full method on the same test points (one run).

    ``recall[("helpful", m)]`` is the mean fraction of the full method's top-m most
    helpful samples that FastIF also ranks in its top-m (equivalently, that are among its
    candidates, since candidate scores are exact); likewise for ``"harmful"``.
    Times are seconds; ``speedup = full_total / fastif_total`` where both totals include
    the same inverse-HVP solve, and ``speedup_scoring`` leaves it (and the one-off index
    build) out.
    """

    n_train: int
    n_test: int
    k: int
    recall: dict[tuple[str, int], float]
    solve_seconds: float
    full_seconds: float
    fastif_seconds: float
    index_seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return (self.solve_seconds + self.full_seconds) / (self.solve_seconds + self.fastif_seconds)

    @property
    def speedup_scoring(self) -> float:
        return self.full_seconds / self.fastif_seconds

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recall"] = {f"{kind}@{m}": v for (kind, m), v in self.recall.items()}
        out["speedup"], out["speedup_scoring"] = self.speedup, self.speedup_scoring
        return out


def compare_with_full(
    fastif: FastIF, test_data: Dataset | tuple[Any, ...], tops: Sequence[int] = (10, 100)
) -> FastIFComparison:
    """Time FastIF and the full method on ``test_data``; recall of the full top-m.

    The inverse-HVPs are solved once and shared (both methods need the same ones); the
    index is built before timing starts and reported separately.
    """
    fastif.build_index()
    t0 = time.perf_counter()
    S = fastif.solve(fastif.test_gradients(test_data))
    solve_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = fastif.influence(test_data, S=S)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (h_idx, _), (a_idx, _) = full_influence(fastif, S, max(tops))
    full_s = time.perf_counter() - t0
    f_help, _ = fast.helpful(max(tops))
    f_harm, _ = fast.harmful(max(tops))
    recall = {}
    for m in tops:
        recall[("helpful", m)] = recall_at_k(f_help[:, :m], h_idx[:, :m])
        recall[("harmful", m)] = recall_at_k(f_harm[:, :m], a_idx[:, :m])
    return FastIFComparison(
        n_train=fastif.n_train,
        n_test=fast.n_test,
        k=min(fastif.config.k, fastif.n_train),
        recall=recall,
        solve_seconds=solve_s,
        full_seconds=full_s,
        fastif_seconds=fast_s,
        index_seconds=fastif.index_seconds,
        timings={k: v for k, v in fast.timings.items() if k != "solve"},
    )
