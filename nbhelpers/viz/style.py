"""One seaborn-based look for every figure in the book."""
import matplotlib

PALETTE = "colorblind"
DIVERGING = "RdBu_r"      # signed outputs / class probabilities (blue = class 0, red = class 1)
SEQUENTIAL = "viridis"    # weights, attention


def use(dpi: int = 100) -> None:
    """Apply the book's theme (call once per notebook; idempotent)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    matplotlib.rcParams.update({
        "figure.dpi": dpi, "savefig.dpi": dpi, "figure.autolayout": False,
        "axes.titlesize": "medium", "axes.titleweight": "bold", "image.cmap": SEQUENTIAL,
    })
