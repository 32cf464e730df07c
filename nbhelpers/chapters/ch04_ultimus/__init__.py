"""Chapter 04: the notebook notebooks/04_ultimus.ipynb — its data, models and experiment."""
