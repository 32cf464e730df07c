"""One module per chapter family of models."""
