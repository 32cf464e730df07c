"""Chapter 05: the notebook notebooks/05_activations.ipynb — its data, models and experiment."""
