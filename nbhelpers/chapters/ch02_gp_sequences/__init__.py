"""Chapter 02: the notebook notebooks/02_gp_sequences.ipynb — its data, models and experiment."""
