"""Results over several seeds: mean ± sd, and the computed verdicts the prose glues (never typed by hand)."""
from __future__ import annotations

import math

import numpy as np


def summary(values) -> dict:
    """mean, sample sd (0 for one seed) and n of finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def pm(values, digits: int = 2) -> str:
    """'mean ± sd' (just the value for one seed, '—' for none)."""
    s = summary(values)
    if not s["n"]:
        return "—"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}" if s["n"] > 1 else f"{s['mean']:.{digits}f}"


def differ(a, b) -> dict:
    """b − a beyond seed noise? diff of means; se from both spreads; significant when |diff| > 2·se. Needs at
    least two seeds on each side to be known."""
    sa, sb = summary(a), summary(b)
    d = sb["mean"] - sa["mean"]
    known = sa["n"] >= 2 and sb["n"] >= 2 and math.isfinite(d)
    se = math.sqrt(sa["sd"] ** 2 / max(sa["n"], 1) + sb["sd"] ** 2 / max(sb["n"], 1)) if known else float("nan")
    return {"diff": d, "se": se, "known": known, "significant": known and abs(d) > 2 * se}


def matters(c: dict, what: str = "it") -> str:
    """Word for a switch (higher is better): does removing/adding ``what`` change the result?"""
    if not c["known"]:
        return "cannot be decided with one seed"
    if not c["significant"]:
        return f"makes no difference beyond seed noise ({c['diff']:+.2f} ± {2 * c['se']:.2f} points)"
    return f"{'helps' if c['diff'] > 0 else 'hurts'} by {abs(c['diff']):.2f} points (beyond 2 se = {2 * c['se']:.2f})"


def beats(c: dict, than: str) -> str:
    """Word for a repair (b) against its control (a), higher is better."""
    if not c["known"]:
        return f"cannot be told apart from {than} with one seed"
    if not c["significant"]:
        return f"does no better than {than} (within seed noise)"
    return (f"beats {than} by {c['diff']:.2f} points" if c["diff"] > 0
            else f"is {-c['diff']:.2f} points worse than {than}")


def within(values, reference: float, tol: float) -> dict:
    """Is the mean of ``values`` within ±tol of a published number?"""
    s = summary(values)
    d = s["mean"] - reference
    return {"diff": d, "ok": bool(math.isfinite(d) and abs(d) <= tol), "tol": tol}


def within_word(w: dict) -> str:
    if not math.isfinite(w["diff"]):
        return "—"
    return ("within noise" if w["ok"] else "not within") + f" ({w['diff']:+.2f} pt, tolerance ±{w['tol']:g})"
