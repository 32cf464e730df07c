"""One module per chapter family of models."""


def count_params(model) -> int:
    """Every parameter of a torch module, trained or fixed (the repaired vision model's data-derived whitening
    filters and unit BatchNorm scales count against its budget too)."""
    return sum(p.numel() for p in model.parameters())
