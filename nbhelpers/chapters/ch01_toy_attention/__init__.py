"""Chapter 01: the notebook notebooks/01_toy_attention.ipynb — its data, models and experiment."""
