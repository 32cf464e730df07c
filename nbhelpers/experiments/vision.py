"""Chapter 3 experiment: the faithful grid, corrected patching, the sqrt(d) ablation, a repaired recipe, timing
and attention maps — all on device-resident data through ``train.fit``."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from .. import train as training
from ..data import images
from ..models import vision as V
from ..viz import plots


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str = "adam"        # adam | adamw
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "step"         # step: StepLR(1, 0.7) per epoch (original) | onecycle: per step | none
    batch_size: int = 64
    stats: str = "mnist"           # mnist: the original's (0.1307, 0.3081) everywhere | own: per dataset
    augment: bool = False
    label_smoothing: float = 0.0
    bf16: bool = False             # autocast to bfloat16 (GPU only)


ORIGINAL = Recipe("original")
SQRT_D = Recipe("1-layer original", lr=5e-5, schedule="none")  # the second original (scale ablation)
SQRT_D_DIMS = dict(depth=1, heads=8, dim_head=16, mlp_dim=512, dropout=0.1, emb_dropout=0.1)
# max test accuracy (%) of the original grid (SPEC, chapter 3)
ORIGINAL_ACC = {("mnist", "cnn"): 97.05, ("cifar10", "cnn"): 57.78, ("cifar100", "cnn"): 22.05,
                ("mnist", "vit"): 97.87, ("cifar10", "vit"): 51.0, ("cifar100", "vit"): 19.72,
                ("mnist", "deepvit"): 97.6, ("cifar10", "deepvit"): 48.03, ("cifar100", "deepvit"): 17.89,
                ("mnist", "hybrid"): 99.2, ("cifar10", "hybrid"): 69.52, ("cifar100", "hybrid"): 34.97}
REPAIRED = Recipe("repaired", optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="onecycle", batch_size=256,
                  stats="own", augment=True, label_smoothing=0.1, bf16=True)


@dataclass
class VisionRun:
    label: str
    dataset: str
    model_name: str
    recipe: Recipe
    params: int
    tokens: int | None
    history: training.History
    curve: pd.DataFrame             # per epoch: epoch, train_loss, test_acc
    model: torch.nn.Module = field(repr=False, default=None)
    timing: dict = field(default_factory=dict)

    @property
    def max_acc(self) -> float:
        return float(self.curve.test_acc.max()) if len(self.curve) else float("nan")


def load_datasets(choice, n_train: int = 0, n_test: int = 0):
    """choice 'all': every dataset, and one whose data is absent becomes a 'not run' row; a dataset named
    explicitly must be present (DataUnavailable otherwise). Returns ({name: ImageData}, {name: reason})."""
    names = list(images.DATASETS) if choice == "all" else ([choice] if isinstance(choice, str) else list(choice))
    data, missing = {}, {}
    for name in names:
        try:
            data[name] = images.load(name).subset(n_train or None, n_test or None)
        except images.DataUnavailable as e:
            if choice != "all":
                raise
            missing[name] = "data unavailable"
            print(f"{name}: not run — {e}")
    if not data:
        raise images.DataUnavailable(f"none of {', '.join(names)} is available under {images.data_root()}: "
                                     f"set NBHELPERS_DATA to the folder that holds them (see the README)")
    return data, missing


def augment_for(dataset: str) -> images.Augment:
    """Crop with 4-pixel padding everywhere; horizontal flips and erasing only where they keep the label."""
    if dataset == "mnist":
        return images.Augment(crop_padding=2, crop_mode="constant")
    return images.Augment(crop_padding=4, flip=True, erase_size=8, erase_p=0.5)


def accuracy(model, x_uint8: torch.Tensor, y: torch.Tensor, batches: images.DeviceBatches, batch: int = 1000,
             amp: bool = False) -> float:
    """Test accuracy on uint8 images, normalised like the training batches."""
    return training.classifier_metrics(model, x_uint8, y, lambda xb: batches.normalise(xb.float().div(255)), batch,
                                       torch.bfloat16 if amp else None)["acc"]


def stats_for(recipe: Recipe, data: images.ImageData) -> tuple:
    """Normalisation: the original applied MNIST's (0.1307, 0.3081) to every channel of every dataset."""
    if recipe.stats == "mnist":
        return tuple(s * data.shape[-1] for s in images.MNIST_STATS)
    return images.STATS[data.name]


def train_model(data: images.ImageData, model_name: str, recipe: Recipe, epochs: int, device, seed: int = 0,
                bug_compatible: bool = True, scaled: bool = True, label: str | None = None, **dims) -> VisionRun:
    """Train one model with one recipe; test accuracy after every epoch (max over epochs, as the original)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    model = V.build(model_name, data.shape, data.num_classes, bug_compatible=bug_compatible, **dims).to(device)
    if not scaled:
        V.set_attention_scale(model, scaled=False)
    stats = stats_for(recipe, data)
    train = images.DeviceBatches(data.x_train, data.y_train, recipe.batch_size, device, stats,
                                 augment_for(data.name) if recipe.augment else None, seed=seed)
    x_test = torch.as_tensor(data.x_test).permute(0, 3, 1, 2).contiguous().to(device)
    y_test = torch.as_tensor(data.y_test).to(device)
    opt_cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=epochs * len(train),
                                                    pct_start=0.2)
        per = "step"
    elif recipe.schedule == "step":
        sched, per = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7), "epoch"
    else:
        sched, per = None, "step"
    amp = recipe.bf16 and device.type == "cuda"
    hist = training.fit(
        model, opt, train, lambda out, y: F.cross_entropy(out.float(), y, label_smoothing=recipe.label_smoothing),
        epochs=epochs, scheduler=sched, scheduler_per=per, device=device, diverge_factor=50,
        amp_dtype=torch.bfloat16 if amp else None, progress=False,
        evaluate=lambda m: {"test_acc": accuracy(m, x_test, y_test, train, amp=amp)})
    df = hist.df
    curve = (df.groupby("epoch").agg(train_loss=("train_loss", "mean"), test_acc=("test_acc", "last"))
             .reset_index().assign(epoch=lambda d: d.epoch + 1))
    return VisionRun(label or model_name, data.name, model_name, recipe, V.count_params(model),
                     V.num_tokens(model, data.shape), hist, curve, model)


def inference_ms(model, x: torch.Tensor, warmup: int = 2, reps: int = 5) -> dict:
    """ms per batch: honest (warm-up, synchronised, median of reps) and as the original measured it (first
    call, no synchronisation: on a GPU this times only the kernel launches)."""
    model.eval()
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        t0 = time.perf_counter()
        model(x)
        naive = (time.perf_counter() - t0) * 1e3
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    model.train()
    return {"ms_per_1000": float(np.median(times)) * 1000 / len(x), "ms_unsynced_first": naive * 1000 / len(x)}


def time_runs(runs: list[VisionRun], data_by_name: dict, device, n: int = 1000, reps: int = 5) -> None:
    for r in runs:
        d = data_by_name[r.dataset]
        x = torch.as_tensor(d.x_test[:n]).permute(0, 3, 1, 2).float().div(255).to(device)
        r.timing = inference_ms(r.model, x, reps=reps)


SHAPES = {"mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100)}


def param_table(bug_compatible: bool = True) -> pd.DataFrame:
    """Parameter count of every model on every dataset (rows: models, columns: datasets)."""
    return pd.DataFrame({d: {m: V.count_params(V.build(m, shape, k, bug_compatible=bug_compatible))
                             for m in V.MODELS} for d, (shape, k) in SHAPES.items()})


def glue_headlines(res, faithful, corrected, repaired) -> None:
    """acc_<model>_<dataset> (faithful) beside orig_<model>_<dataset> (the original's published number),
    acc_corrected_<model>_<dataset>, acc_repaired_<dataset>, params_repaired."""
    for r in faithful:
        res.glue(f"acc_{r.model_name}_{r.dataset}", 100 * r.max_acc)
        res.glue(f"orig_{r.model_name}_{r.dataset}", ORIGINAL_ACC[(r.dataset, r.model_name)])
    for r in corrected:
        res.glue(f"acc_corrected_{r.model_name}_{r.dataset}", 100 * r.max_acc)
    for r in repaired:
        res.glue(f"acc_repaired_{r.dataset}", 100 * r.max_acc)
    if repaired:
        res.glue("params_repaired", repaired[0].params)


def table(runs: list[VisionRun], missing: dict | None = None) -> pd.DataFrame:
    """Results rows; ``missing`` = {dataset: reason} adds 'not run' rows instead of numbers."""
    rows = [{"dataset": r.dataset, "model": r.label, "recipe": r.recipe.name, "params": r.params,
             "tokens": r.tokens if r.tokens is not None else "—", "epochs": len(r.curve),
             "max test acc %": 100 * r.max_acc,
             "original %": ORIGINAL_ACC.get((r.dataset, r.model_name)) if r.recipe == ORIGINAL and
             r.label == r.model_name else np.nan, "ms / 1000 img": r.timing.get("ms_per_1000", np.nan),
             "ms unsynced (original style)": r.timing.get("ms_unsynced_first", np.nan),
             "status": "ok" if r.history.ok else r.history.reason} for r in runs]
    for dataset, reason in (missing or {}).items():
        rows.append({"dataset": dataset, "model": "all", "recipe": "—", "status": f"not run: {reason}"})
    return pd.DataFrame(rows)


def corrected_patch(shape: tuple, grid: str, model_name: str = "vit") -> int | None:
    """Patch size of the corrected grid: 'fine' = patch 4 (7×7 tokens on 28 px, 8×8 on 32 px), 'coarse' = a
    4×4 token grid (patch 7 or 8), ~4x cheaper on a CPU. The hybrid keeps patch 2 on its 12/14-px feature map."""
    if model_name == "hybrid":
        return None
    return 4 if grid == "fine" else shape[0] // 4


def run_grid(datasets: dict, model_names, recipe: Recipe, epochs: int, device, seed: int = 0, **kw) -> list:
    """Every dataset x model with one recipe and settings (kw: bug_compatible, scaled, patch_size, label; a
    callable value is called with (data, model_name))."""
    from tqdm.std import tqdm

    jobs = [(d, m) for d in datasets for m in model_names]
    out = []
    for d, m in tqdm(jobs, desc=recipe.name, mininterval=10):
        kw_d = {k: (v(datasets[d], m) if callable(v) else v) for k, v in kw.items()}
        out.append(train_model(datasets[d], m, recipe, epochs, device, seed=seed, **kw_d))
    return out


# ---------------------------------------------------------------- figures

def plot_curves(runs: list[VisionRun]):
    datasets = list(dict.fromkeys(r.dataset for r in runs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for r in (r for r in runs if r.dataset == d):
            ax.plot(r.curve.epoch, 100 * r.curve.test_acc, marker="o", ms=3, label=r.label)
        ax.set(title=d, xlabel="epoch", ylabel="test accuracy %")
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def cls_attention(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLS-token attention of the last layer, averaged over heads, on the patch grid: (B, g, g).
    Uses vit-pytorch's Recorder (ViT models only)."""
    from vit_pytorch.recorder import Recorder

    rec = Recorder(model.eval())
    with torch.no_grad():
        _, attns = rec(x)
    rec.eject()
    cls = attns[:, -1].mean(1)[:, 0, 1:]  # last layer, mean over heads, CLS row, patch keys
    g = int(math.isqrt(cls.shape[-1]))
    return cls.reshape(-1, g, g)


def plot_attention(data: images.ImageData, models_by_label: dict, stats, n: int = 6):
    """Sample test images and, per model, the CLS attention over its patch grid (upsampled onto the image)."""
    x_u8 = torch.as_tensor(data.x_test[:n]).permute(0, 3, 1, 2).float().div(255)
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in stats)
    rows = 1 + len(models_by_label)
    fig, axes = plt.subplots(rows, n, figsize=(1.6 * n, 1.7 * rows), squeeze=False)
    show = x_u8.permute(0, 2, 3, 1).numpy()
    for j in range(n):
        axes[0, j].imshow(show[j].squeeze(), cmap="gray" if show.shape[-1] == 1 else None)
        axes[0, j].set_title(data.classes[data.y_test[j]].split(" - ")[-1], fontsize="x-small")
    axes[0, 0].set_ylabel("image", fontsize="small")
    for i, (label, model) in enumerate(models_by_label.items(), start=1):
        device = next(model.parameters()).device
        att = cls_attention(model, ((x_u8 - mean) / std).to(device)).cpu()
        up = F.interpolate(att[:, None], size=show.shape[1:3], mode="nearest")[:, 0].numpy()
        for j in range(n):
            axes[i, j].imshow(show[j].mean(-1), cmap="gray")
            axes[i, j].imshow(up[j], cmap="magma", alpha=0.6)
        axes[i, 0].set_ylabel(f"{label}\n{att.shape[-1]}×{att.shape[-1]} tokens", fontsize="x-small")
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def styled(df: pd.DataFrame):
    return plots.table_style(df).format({"max test acc %": "{:.2f}", "original %": "{:.2f}", "ms / 1000 img": "{:.1f}",
                                         "ms unsynced (original style)": "{:.1f}", "params": "{:,.0f}"},
                                        na_rep="—")
