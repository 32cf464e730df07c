"""One package per chapter (``chNN_<notebook name>``): its data, models and experiment."""
