"""The user's path holds (issue 11): own-model detect, label and row-ID validation, escaped
messages, one-line errors with exit code 2 and no partial output, 1-based ranks, no silent
overwrites, and the store checks of ``gradsift score`` / ``extract``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from gradsift.cli import app
from gradsift.errors import GradsiftError
from gradsift.experiments.tabular import read_table, standardized

sys.path.insert(0, str(Path(__file__).parent))
from test_store_verify import store_of  # noqa: E402

runner = CliRunner()
FACTORY = Path(__file__).parent / "fixtures" / "user_factory.py"
COMMANDS = ["demo", "detect", "explain", "extract", "score", "trim"]

BAD_FACTORIES = """
import torch
from torch import nn
from torch.utils.data import TensorDataset


def _data(d=5, n=20):
    torch.manual_seed(0)
    x = torch.randn(n, d)
    return x, (x[:, 0] > 0).long()


def non_dataset():
    return nn.Linear(5, 2), 42


def float_labels():
    x, y = _data()
    return nn.Linear(5, 2), TensorDataset(x, y.float())


def wrong_shape():
    x, y = _data(d=7)
    return nn.Linear(5, 2), TensorDataset(x, y)
"""


def wine_frame() -> pd.DataFrame:
    from sklearn.datasets import load_wine

    return load_wine(as_frame=True).frame.rename(columns={"target": "label"})


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def invoke(args: list[str]):
    return runner.invoke(app, args, catch_exceptions=False)


# ------------------------------------------------------------------ item 1


def test_detect_user_model_without_json_prints_the_summary(tmp_path):
    out_csv = tmp_path / "s.csv"
    args = ["detect", "--model", f"{FACTORY}:make", "--detectors", "l2,loss", "--budget", "6"]
    result = invoke([*args, "--out", str(out_csv)])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out_csv, index_col="index")
    assert len(scores) == 60 and "Most suspicious rows by l2" in result.stdout
    top = scores.sort_values("l2_score", ascending=False).index[:3]
    assert all(str(i) in result.stdout for i in top)


# ------------------------------------------------------------------ item 6: one line, exit 2


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A working folder holding the inputs every bad-input case below uses."""
    monkeypatch.chdir(tmp_path)
    wine_frame().to_csv("wine.csv", index=False)
    (tmp_path / "facts.py").write_text(BAD_FACTORIES)
    (tmp_path / "h9_mymodel.py").write_text(BAD_FACTORIES + "\nmake = wrong_shape\n")
    Path("header.csv").write_text("a,b,label\n")
    Path("empty.csv").write_text("")
    for n in (2, 4):
        pd.DataFrame({"a": np.arange(n) * 0.5, "label": np.arange(n) % 2}).to_csv(
            f"rows{n}.csv", index=False
        )
    np.save("arr.npy", np.zeros((20, 3)))
    Path("some.csv").write_text("a\n1\n")
    Path("nosettings").mkdir()
    Path("nosettings/manifest.json").write_text(json.dumps({"format": "gradsift-store/1"}))
    return tmp_path


BAD_INPUT = {
    "factory returns a non-dataset": (["detect", "--model", "facts.py:non_dataset"], "dataset"),
    "float labels from a factory": (["detect", "--model", "facts.py:float_labels"], "y.long()"),
    "feature-shape mismatch": (["detect", "--model", "facts.py:wrong_shape"], "input size"),
    "empty detector list": (["detect", "wine.csv", "--detectors", ""], "--detectors is empty"),
    "unknown detector": (["detect", "wine.csv", "--detectors", "l2,nosuch"], "unknown detector"),
    "missing output folder": (
        ["detect", "wine.csv", "--out", "/nonexistent/dir/x.csv"],
        "does not exist",
    ),
    "score of a file": (["score", "some.csv"], "not a gradient store"),
    "manifest without settings": (["score", "nosettings"], "manifest of nosettings"),
    "zero epochs": (["detect", "wine.csv", "--epochs", "0"], "--epochs must be at least 1"),
    "header-only CSV": (["detect", "header.csv"], "no rows"),
    "empty file": (["detect", "empty.csv"], "is empty"),
    "two rows": (["detect", "rows2.csv"], "at least 10"),
    "four rows": (["detect", "rows4.csv"], "at least 10"),
    "npy as a table": (["detect", "arr.npy"], "numpy.savez"),
    "unknown checkpoint": (["detect", "wine.csv", "--checkpoint", "nosuch"], "'nosuch'"),
    "module spec of a file": (["detect", "--model", "h9_mymodel:make"], "h9_mymodel.py:"),
    "markup in a path": (["detect", "data[/]x.csv"], "no such file: data[/]x.csv"),
    "bad score suffix": (["score", "nosettings", "--out", "x.txt"], ".csv or .npy"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_no_output(user_dir, case):
    args, expected = BAD_INPUT[case]
    before = files(user_dir)
    result = invoke(args)
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and len(err.splitlines()) == 1, err
    assert err.startswith("error:") and expected in err, err
    assert files(user_dir) == before  # no output, not even a partial one


def test_huge_feature_values_keep_their_spread(tmp_path):
    frame = wine_frame()
    frame["huge"] = np.random.default_rng(0).uniform(1e37, 1e38, len(frame))
    frame.to_csv(tmp_path / "w.csv", index=False)
    table = read_table(tmp_path / "w.csv")
    z = standardized(table).X[:, table.feature_names.index("huge")].astype(np.float64)
    col = table.X[:, table.feature_names.index("huge")].astype(np.float64)
    assert np.allclose(z, (col - col.mean()) / col.std(), atol=1e-5)
    assert abs(z.std() - 1.0) < 1e-4  # was silently all zeros (float32 overflow)


# ------------------------------------------------------------------ item 3: labels


def test_label_values_map_to_classes_and_keep_their_names(tmp_path):
    frame = wine_frame()
    frame["label"] = frame["label"].map({0: 0, 1: 1000, 2: 7})
    frame.to_csv(tmp_path / "w.csv", index=False)
    table = read_table(tmp_path / "w.csv")
    assert table.n_classes == 3 and table.class_names == ["0", "7", "1000"]
    assert np.array_equal(np.array(table.class_names)[table.y], frame["label"].astype(str))
    out_csv = tmp_path / "s.csv"
    args = ["detect", str(tmp_path / "w.csv"), "--epochs", "3", "--detectors", "l2"]
    result = invoke([*args, "--out", str(out_csv), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes"] == 3
    scores = pd.read_csv(out_csv, index_col="index")
    assert np.array_equal(scores["label"], frame["label"])
    assert set(scores["predicted"]) <= {0, 7, 1000}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda n: np.where(np.arange(n) % 9 == 0, np.nan, np.arange(n) % 2), "missing labels"),
        (lambda n: np.linspace(0.0, 1.0, n), "non-integer"),
        (lambda n: np.arange(n) % (n // 2 + 1), "distinct labels"),
        (lambda n: np.zeros(n, dtype=int), "at least 2"),
    ],
    ids=["nan", "continuous", "one-class-per-row", "one-class"],
)
def test_unusable_labels_are_refused(tmp_path, labels, message):
    frame = wine_frame()
    frame["label"] = labels(len(frame))
    frame.to_csv(tmp_path / "w.csv", index=False)
    with pytest.raises(GradsiftError, match=message):
        read_table(tmp_path / "w.csv")


def test_many_classes_give_a_notice(tmp_path):
    frame = wine_frame()
    n_classes = math.ceil(math.sqrt(len(frame))) + 2
    frame["label"] = np.arange(len(frame)) % n_classes
    frame.to_csv(tmp_path / "w.csv", index=False)
    table = read_table(tmp_path / "w.csv")
    assert table.n_classes == n_classes and any("sqrt(n)" in m for m in table.notices)


# ------------------------------------------------------------------ item 4: row identity


def cancer_csv(tmp_path: Path, ids, name: str = "bc.csv", **to_csv) -> tuple[Path, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"})
    flipped = np.random.default_rng(0).choice(len(frame), 30, replace=False)
    frame.loc[flipped, "label"] = 1 - frame.loc[flipped, "label"]
    if ids is not None:
        frame.insert(0, "id", ids)
    path = tmp_path / name
    frame.to_csv(path, index=False, **to_csv)
    return path, flipped


def test_numeric_id_column_is_not_a_feature(tmp_path):
    from sklearn.metrics import roc_auc_score

    n = 569
    plain, flipped = cancer_csv(tmp_path, None, "plain.csv")
    with_id, _ = cancer_csv(tmp_path, 842302 + 7 * np.arange(n), "with_id.csv")
    args = ["--epochs", "20", "--detectors", "l2", "--json"]
    ref = invoke(["detect", str(plain), *args, "--out", str(tmp_path / "a.csv")])
    got = invoke(["detect", str(with_id), *args, "--out", str(tmp_path / "b.csv")])
    assert ref.exit_code == 0 and got.exit_code == 0, got.output
    assert "dropped integer columns unique per row ['id']" in got.stderr
    a = pd.read_csv(tmp_path / "a.csv")["l2_score"]
    b = pd.read_csv(tmp_path / "b.csv")["l2_score"]
    assert np.allclose(a, b)  # the same detection as without the ID column
    assert roc_auc_score(np.isin(np.arange(n), flipped), b) > 0.95

    named = invoke(
        ["detect", str(with_id), *args, "--id-column", "id", "--out", str(tmp_path / "c.csv")]
    )
    assert named.exit_code == 0, named.output
    scores = pd.read_csv(tmp_path / "c.csv", index_col="index")
    assert np.array_equal(scores["id"], 842302 + 7 * np.arange(n))
    assert np.allclose(scores["l2_score"], a)
    top = json.loads(named.stdout)["top"]
    assert all(r["id"] == 842302 + 7 * r["index"] for r in top)


def test_text_ids_separators_and_constant_columns(tmp_path):
    frame = wine_frame()
    frame.insert(0, "name", [f"wine-{i}" for i in range(len(frame))])
    frame["const"] = 1.0
    frame.to_csv(tmp_path / "w.csv", index=False)
    with pytest.raises(GradsiftError, match="pass --id-column name"):
        read_table(tmp_path / "w.csv")
    table = read_table(tmp_path / "w.csv", id_column="name")
    assert table.row_ids[3] == "wine-3" and "name" not in table.feature_names
    assert "const" not in table.feature_names and any("constant" in m for m in table.notices)
    frame.to_csv(tmp_path / "w.tsv", index=False, sep="\t")
    frame.to_csv(tmp_path / "w.txt", index=False, sep=";")
    for other in (
        read_table(tmp_path / "w.tsv", id_column="name"),
        read_table(tmp_path / "w.txt", id_column="name", sep=";"),
    ):
        assert np.array_equal(other.X, table.X) and np.array_equal(other.y, table.y)
    with pytest.raises(GradsiftError, match="pass --sep ';'"):
        read_table(tmp_path / "w.txt")


# ------------------------------------------------------------------ item 5: escaping


def test_user_strings_and_help_texts_are_not_markup(tmp_path):
    frame = wine_frame()
    frame["label"] = frame["label"].map({0: "[red]", 1: "b", 2: "c"})
    path = tmp_path / "wine[red].csv"
    frame.to_csv(path, index=False)
    out_csv = tmp_path / "s[bold].csv"
    result = invoke(
        ["detect", str(path), "--epochs", "2", "--detectors", "l2", "--out", str(out_csv)]
    )
    assert result.exit_code == 0, result.output
    assert "s[bold].csv" in result.stdout and "[red]" in result.stdout
    for command in COMMANDS:
        help_text = invoke([command, "--help"]).output
        json_line = next(line for line in help_text.splitlines() if "--json" in line)
        assert "bool" not in json_line.lower(), json_line  # a flag, not an option with a value
    assert "[m, D]" in invoke(["score", "--help"]).output
    assert "[D, D]" in invoke(["score", "--help"]).output


def test_score_errors_keep_their_brackets(tmp_path):
    store_of(tmp_path / "train")
    np.save(tmp_path / "bad.npy", np.zeros((5, 4)))
    result = invoke(["score", str(tmp_path / "train"), "--test", str(tmp_path / "bad.npy")])
    assert result.exit_code == 2 and "[" in result.stderr, result.output
    assert not (tmp_path / "topk.npz").exists() and not Path("topk.npz").exists()


# ------------------------------------------------------------------ item 8


def test_ranks_are_one_based_everywhere(tmp_path):
    wine = tmp_path / "w.csv"
    wine_frame().to_csv(wine, index=False)
    out_csv = tmp_path / "s.csv"
    args = ["detect", str(wine), "--epochs", "2", "--detectors", "l2,loss", "--out", str(out_csv)]
    result = invoke([*args, "--json"])
    scores = pd.read_csv(out_csv, index_col="index")
    for name in ("l2", "loss"):
        assert sorted(scores[f"{name}_rank"]) == list(range(1, len(scores) + 1))
        assert scores[f"{name}_rank"].idxmin() == scores[f"{name}_score"].idxmax()
    top = json.loads(result.stdout)["top"]
    assert [r["l2_rank"] for r in top] == list(range(1, len(top) + 1))

    store_of(tmp_path / "store")
    out = tmp_path / "d.csv"
    assert invoke(["score", str(tmp_path / "store"), "--out", str(out)]).exit_code == 0
    frame = pd.read_csv(out)
    assert frame.loc[frame["score"].idxmax(), "rank"] == 1 and frame["rank"].min() == 1


def test_existing_outputs_are_not_overwritten(tmp_path):
    report = tmp_path / "explain.html"
    report.write_text("mine")
    result = invoke(["explain", "--report", str(report)])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert report.read_text() == "mine"
    wine = tmp_path / "w.csv"
    wine_frame().to_csv(wine, index=False)
    result = invoke(["detect", str(wine), "--out", str(report)])
    assert result.exit_code == 2 and report.read_text() == "mine"
    args = ["detect", str(wine), "--epochs", "2", "--detectors", "l2", "--out", str(report)]
    assert invoke([*args, "--overwrite"]).exit_code == 0
    assert pd.read_csv(report).shape[0] == 178


# ------------------------------------------------------------------ stores


def test_score_refuses_a_test_store_with_another_projection(tmp_path):
    projection = {"dim": 6, "kind": "gaussian", "seed": 0}
    store_of(tmp_path / "train", projection=projection)
    store_of(tmp_path / "test", rows=7, projection={**projection, "seed": 1})
    out = tmp_path / "t.npz"
    args = ["score", str(tmp_path / "train"), "--test", str(tmp_path / "test"), "--out", str(out)]
    result = invoke(args)
    assert result.exit_code == 2 and "projection: train" in result.stderr, result.output
    assert not out.exists()
    store_of(tmp_path / "same", rows=7, seed=3, projection=projection)
    args[3] = str(tmp_path / "same")
    assert invoke([*args, "--verify", "header"]).exit_code == 0 and out.exists()


def test_extract_reports_repaired_shards(tmp_path):
    from test_store_verify import rewrite

    store = tmp_path / "s"
    common = ["--dataset=digits", "--epochs=1", f"--checkpoint={tmp_path / 'm.pt'}"]
    common += ["--rows-per-shard=500", "--json"]
    first = json.loads(invoke(["extract", str(store), *common]).stdout)
    assert first["shards_repaired"] == []
    rewrite(store / "grads-000001.npy", lambda a: a.__setitem__(0, a[0] * 1000.0))
    header = json.loads(invoke(["extract", str(store), *common, "--verify", "header"]).stdout)
    assert header["shards_repaired"] == [] and header["shards_written"] == 0  # not hashed
    again = json.loads(invoke(["extract", str(store), *common]).stdout)
    assert again["shards_repaired"] == [1] and again["shards_written"] == 1
    text = invoke(["extract", str(store), *common[:-1]])
    assert "0 repaired" in text.stdout


def test_detect_runs_aum_on_tables_but_not_on_a_user_model():
    """AUM reads the checkpoints of the training run that ``detect`` does on a table; a
    user model comes without them, so its default list leaves AUM out."""
    from gradsift.cli.detect import default_detectors

    assert default_detectors(None).split(",")[:2] == ["l2", "aum"]
    assert "aum" not in default_detectors("mymodel.py:make").split(",")
