"""Plots and animations with one consistent style (``viz.style.use()``)."""
from . import animate, plots, style  # noqa: F401
