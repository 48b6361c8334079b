"""FastIF: influence functions restricted to nearest-neighbour candidates.

Three changes to plain influence (METHODS.md, "FastIF"):

1. **Candidates.** Per test point, only the ``k`` training samples nearest to it are
   scored (default ``k = 1000``). The search runs in one of two spaces:

   - ``features``: the penultimate features ``h`` (the input of the model's last
     ``nn.Linear``, captured by a forward hook), as in the FastIF paper (L2 by default);
   - ``gradients``: seeded random projections ``P g_i`` of the training gradients, queried
     with the projected inverse-HVP ``P s_t``. Then the index's inner product
     ``(P s_t)ᵀ(P g_i) ≈ s_tᵀ g_i`` *is* an approximate influence score, and half of the
     ``k`` candidates come from the query ``P s_t`` (helpful) and half from ``−P s_t``
     (harmful). Use ``metric="ip"`` there.

2. **One inverse-HVP per test point.** ``s_t = (H+λI)⁻¹ g_t`` with any
   :class:`~gradsift.influence.solvers.InverseHVP`; candidate ``i`` scores
   ``score(i, t) = s_tᵀ g_i`` (**positive = helpful**: removing ``i`` raises ``t``'s loss).

3. **Processes.** LiSSA repetitions (independent seeded chains,
   :meth:`LiSSASolver.run_chain`) and candidate scoring (blocks of candidate rows) run in a
   ``spawn`` process pool of ``workers`` processes. Work is split into the same units
   whatever the number of workers, and combined in a fixed order, so results do not
   depend on it (up to BLAS thread-count rounding).

Training gradients of the candidates are computed on demand with
:class:`~gradsift.grads.computer.GradientComputer` (a backward pass per candidate, as in the
paper), or gathered from a precomputed matrix or :class:`~gradsift.store.gradient_store.GradientStore`.

:func:`full_influence` is the unrestricted method (every training row, streaming top-k);
:func:`compare_with_full` times both on the same test points and reports the recall of
the full method's top-m helpful and harmful samples and the speed-up.

Modules: :mod:`.config` (:class:`FastIFConfig`), :mod:`.candidates` (penultimate features,
candidate merging), :mod:`.parallel` (training-gradient gathering, the worker pool,
parallel LiSSA), :mod:`.fastif` (the :class:`FastIF` front object and
:class:`FastIFResult`), :mod:`.compare` (the full method and the comparison).
"""

from gradsift.influence.fastif.candidates import penultimate_features
from gradsift.influence.fastif.compare import FastIFComparison, compare_with_full, full_influence
from gradsift.influence.fastif.config import FastIFConfig
from gradsift.influence.fastif.fastif import FastIF, FastIFResult
from gradsift.influence.fastif.parallel import solve_parallel

__all__ = [
    "FastIFConfig",
    "FastIF",
    "FastIFResult",
    "FastIFComparison",
    "penultimate_features",
    "full_influence",
    "compare_with_full",
    "solve_parallel",
]
