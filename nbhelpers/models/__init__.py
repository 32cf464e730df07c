"""One module per chapter family of models."""


def count_params(model) -> int:
    """Trainable parameters of a torch module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
