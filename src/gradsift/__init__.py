"""gradsift: training-data attribution and cleaning for PyTorch.

Outlier Gradient Analysis (:mod:`gradsift.detect.oga`), influence functions
(:mod:`gradsift.influence`), FastIF, and the gradient store they share. See
``docs/ARCHITECTURE.md`` for the module map.
"""

__version__ = "0.1.0"
