"""K-FAC / EK-FAC fidelity: LDS next to exact IF, CG and kronfluence's EK-FAC, with seconds.

Run (digits MLP 64-32-10, every parameter tracked, D = 2,410)::

    nice -n 10 .venv/bin/python benchmarks/kfac_fidelity.py
    nice -n 10 .venv/bin/python benchmarks/kfac_fidelity.py --quick

The baseline needs kronfluence, which pins a newer torch: install it next to the
project's torch with ``.venv/bin/pip install --no-deps kronfluence einconv einops
opt_einsum`` (it is therefore not in the ``bench`` extra). Without it that row is skipped.

The LDS set-up is that of ``benchmarks/influence_fidelity.py`` part 2
(:func:`influence_fidelity.digits_lds`: same model, training recipe, α = 0.5 subsets
from :func:`gradsift.evaluate.subset_masks`, retrained through
:func:`gradsift.evaluate.run_retrains`, scored by :func:`gradsift.evaluate.lds_from_outputs`:
Spearman over subsets per test point, mean over test points), with ``--tracked all``. Each method gets the same model, training data and test
points; wall time is fit + all pairwise scores. gradsift's K-FAC / EK-FAC use their
defaults (``fisher="auto"``: the exact Fisher for this 10-class head; damping 0.1 × mean
eigenvalue) unless a row says
otherwise; kronfluence's EK-FAC its defaults (sampled labels, heuristic damping
0.1 × mean eigenvalue per module).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from gradsift.influence import EKFACSolver, KFACSolver
from gradsift.task import ClassificationTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from influence_fidelity import digits_lds, run_method, vs_exact  # noqa: E402


def kronfluence_ekfac(model, train, test) -> tuple[np.ndarray, float, str]:
    """kronfluence's EK-FAC pairwise scores ``[n_train, n_test]`` and seconds."""
    try:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task as KTask
    except ImportError as err:
        return np.full((len(train[1]), len(test[1])), np.nan), 0.0, f"not installed: {err}"

    class KronTask(KTask):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(batch[0])
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
                return F.cross_entropy(logits, y, reduction="sum")
            return F.cross_entropy(logits, batch[1], reduction="sum")

        def compute_measurement(self, batch, model):
            return F.cross_entropy(model(batch[0]), batch[1], reduction="sum")

    import copy
    import logging

    torch.manual_seed(0)
    m = prepare_model(copy.deepcopy(model), KronTask())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer(
            "bench", m, KronTask(), cpu=True, disable_tqdm=True, output_dir=out,
            log_level=logging.WARNING,
        )  # fmt: skip
        tr, te = TensorDataset(*train), TensorDataset(*test)
        analyzer.fit_all_factors(
            "ekfac", tr, per_device_batch_size=256, factor_args=FactorArguments(strategy="ekfac")
        )
        analyzer.compute_pairwise_scores(
            "s", "ekfac", te, tr, per_device_query_batch_size=len(te),
            per_device_train_batch_size=256, score_args=ScoreArguments(),
        )  # fmt: skip
        scores = analyzer.load_pairwise_scores("s")
        S = scores["all_modules"].T.double().numpy()  # [n_test, n_train] → [n_train, n_test]
    return S, time.perf_counter() - t0, ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--damping", type=float, default=0.01, help="λ of exact IF and CG")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_models, epochs = (8, 5) if args.quick else (args.models, args.epochs)
    wd, alpha = 1e-3, 0.5
    # Model, α-subsets and subset models' −loss via gradsift.evaluate (shared with
    # influence_fidelity.py part 2).
    gt = digits_lds(n_models, epochs, alpha, wd)
    model, train, test = gt.model, gt.train, gt.test
    n, subset_seconds = len(train[1]), gt.seconds

    def lds(S: np.ndarray) -> tuple[float, float]:
        res = gt.lds(S)
        if res is None:
            return float("nan"), float("nan")
        return res.score, float(np.nanstd(res.per_test))

    task = ClassificationTask("all")
    dim = sum(p.numel() for p in task.tracked_parameters(model).values())
    d, kw = args.damping, {"weight_decay": wd}
    rows = [
        ("if-exact", "if-exact", {"damping": d, **kw}),
        ("if-cg", "if-cg", {"damping": d, **kw}),
        ("kfac (gradsift, defaults)", "if-cg", {"solver": KFACSolver(), **kw}),
        ("ekfac (gradsift, defaults)", "if-cg", {"solver": EKFACSolver(), **kw}),
        ("ekfac (gradsift, per-layer damping)", "if-cg",
         {"solver": EKFACSolver(damping_scope="layer"), **kw}),
        ("ekfac (gradsift, one sampled label)", "if-cg",
         {"solver": EKFACSolver(fisher="sampled"), **kw}),
        (f"ekfac (gradsift, λ = {d:g})", "if-cg", {"solver": EKFACSolver(damping=d), **kw}),
    ]  # fmt: skip
    results = [(label, *run_method(model, task, meth, k, train, test)) for label, meth, k in rows]
    results.append(("ekfac (kronfluence 1.0.1)", *kronfluence_ekfac(model, train, test)))
    exact = results[0][1]
    print(
        f"\n## LDS: MLP 64-32-10 on digits (n = {n}, {len(test[1])} test points, {n_models} models "
        f"on α = {alpha} subsets, {epochs} epochs; subsets trained in {subset_seconds:.0f} s; "
        f"tracked: all, D = {dim}; torch threads {args.threads})\n"
    )
    print("| method | LDS mean ± std | Pearson vs if-exact | wall s | notes |")
    print("|---|---:|---:|---:|---|")
    for label, S, sec, note in results:
        mean, std = lds(S)
        print(
            f"| {label} | {mean:.3f} ± {std:.3f} | {vs_exact(S, exact):.3f} | {sec:.2f} | {note} |"
        )


if __name__ == "__main__":
    main()
