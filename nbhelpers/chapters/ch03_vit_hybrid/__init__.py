"""Chapter 03: the notebook notebooks/03_vit_hybrid.ipynb — its data, models and experiment."""
