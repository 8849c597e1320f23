"""ROME's average indirect effect (Meng et al. 2022, Figure 2) over a set of traced facts.

Indirect effect of a cell (token t, layer l): IE[t, l] = p_restored[t, l] - p_corrupted, the probability of the answer
with the clean value restored there minus the corrupted run's (metric "prob": the product of the answer tokens'
probabilities, samples averaged). Each fact's prompt tokens fall into ROME's six classes, with the subject at tokens
[s0, s1) of T:

    first subject token    s0
    middle subject tokens  s0+1 .. s1-2 (mean; none for subjects of one or two tokens)
    last subject token     s1-1 (the same token as the first for a one-token subject)
    first subsequent token s1 (none when the subject ends at the last token or the one before it)
    further tokens         s1+1 .. T-2 (mean; none when empty)
    last token             T-1

A fact's class effect is the mean IE over its tokens of that class ([6, L], NaN for a class it has no token of);
the average indirect effect (AIE) is the mean over the facts the model knows (clean probability of the answer at
least a threshold) that have the class, with a percentile bootstrap over facts for its confidence interval."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

TOKEN_CLASSES = ("first subject token", "middle subject tokens", "last subject token", "first subsequent token",
                 "further tokens", "last token")


def class_tokens(T: int, subject: tuple[int, int]) -> list[list[int]]:
    """The prompt token positions of each of ROME's six classes (see the module docstring)."""
    s0, s1 = subject
    first_after = [s1] if s1 < T - 1 else []
    return [[s0], list(range(s0 + 1, s1 - 1)), [s1 - 1], first_after, list(range(s1 + 1, T - 1)), [T - 1]]


def class_effects(grid_prob: np.ndarray, corrupt_prob: float, subject: tuple[int, int]) -> np.ndarray:
    """One fact's indirect effect by token class: [6, L] (NaN for a class without tokens) from its prob grid [T, L]
    (the prompt's tokens; a row of NaN, a token not computed, stays NaN)."""
    T, L = grid_prob.shape
    ie = grid_prob - corrupt_prob  # [T, L]
    out = np.full((len(TOKEN_CLASSES), L), np.nan)
    for k, toks in enumerate(class_tokens(T, subject)):
        if toks:
            out[k] = ie[toks].mean(axis=0)
    return out


@dataclass
class AverageEffect:
    """The AIE of one restore kind over the known facts: mean [6, L], low / high [6, L] (the bootstrap interval),
    count [6] (facts averaged per class)."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray


def average_effects(effects: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> AverageEffect:
    """Mean over facts of `effects` [F, 6, L] (NaN: the fact has no token of that class) with a percentile bootstrap
    over facts: n_boot resamples of the F facts with replacement, the (1 - level) / 2 and (1 + level) / 2 quantiles
    of their means."""
    F, K, L = effects.shape
    if F == 0:
        nan = np.full((K, L), np.nan)
        return AverageEffect(nan, nan.copy(), nan.copy(), np.zeros(K, dtype=np.int64))
    have = ~np.isnan(effects)  # [F, K, L]
    filled = np.where(have, effects, 0.0).reshape(F, K * L)
    mask = have.reshape(F, K * L).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (filled.sum(0) / mask.sum(0)).reshape(K, L)
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(F, np.full(F, 1.0 / F), size=n_boot).astype(np.float64)  # [B, F]: draws per fact
        boot = (weights @ filled) / (weights @ mask)  # [B, K*L]; NaN where a resample holds no fact of the class
        q = [(1 - level) / 2, (1 + level) / 2]
        with warnings.catch_warnings():  # a class no fact has: its interval is NaN, as its mean
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(boot, q, axis=0) if n_boot else (mean.ravel(), mean.ravel())
    count = have[:, :, 0].sum(0).astype(np.int64)  # [K]
    return AverageEffect(mean, np.asarray(low).reshape(K, L), np.asarray(high).reshape(K, L), count)
