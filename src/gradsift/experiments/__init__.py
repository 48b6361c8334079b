"""Research experiments: data sets, noise, model zoo, training, trimming, demo, tabular, correction."""
