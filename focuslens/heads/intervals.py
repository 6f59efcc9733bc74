"""Confidence intervals of per-head means, by the bootstrap over prompts.

A per-head table (contextual scores, ablation or patching effects) is a mean over
prompts; how far it would move with other prompts is what :func:`bootstrap_ci` says. It
resamples the prompts with replacement and computes every head's mean on each resample
(all heads on the same resamples, so the intervals of two heads are comparable), with
:func:`scipy.stats.bootstrap` (bias-corrected and accelerated, ``method="BCa"``, by
default; ``"percentile"`` and ``"basic"`` too).

NaN means "not measured": a head whose values are all NaN gets a NaN interval, and a
prompt whose value is NaN (a prompt without a relevant span, a named span it lacks) is
left out of that head's resampling. A head with the same value on every prompt gets the
zero-width interval at that value.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

METHODS = ("BCa", "percentile", "basic")
"""Accepted values of ``method``."""


def bootstrap_ci(
    per_example: Tensor,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    method: str = "BCa",
) -> tuple[Tensor, Tensor]:
    """Bootstrap confidence interval of the mean over the first axis, per column.

    Args:
        per_example: ``[n_examples, ...]`` values (e.g. ``[n_examples, n_layers,
            n_heads]``); NaN values are skipped (see the module docstring).
        level: Confidence level, in ``(0, 1)``.
        n_boot: Number of bootstrap resamples.
        seed: Seed of the resampling (same seed, same interval).
        method: ``"BCa"`` (default), ``"percentile"`` or ``"basic"``.

    Returns:
        ``(low, high)``, each shaped like ``per_example[0]``.

    Example:
        >>> x = torch.tensor([[0.1], [0.4], [0.2], [0.5], [0.3], [0.35]])
        >>> low, high = bootstrap_ci(x, n_boot=500)
        >>> bool(low[0] < x.mean() < high[0])
        True
    """
    import scipy.stats

    if not isinstance(level, float) or not 0 < level < 1:
        raise ValueError(f"level must be a float in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an int >= 100, got {n_boot!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if per_example.dim() < 1 or per_example.shape[0] < 2:
        raise ValueError(
            f"a bootstrap interval needs values of at least 2 examples, got shape "
            f"{tuple(per_example.shape)}"
        )
    shape = per_example.shape[1:]
    data = per_example.detach().double().cpu().reshape(per_example.shape[0], -1).numpy()
    low = np.full(data.shape[1], np.nan)
    high = np.full(data.shape[1], np.nan)
    finite = np.isfinite(data)
    # Columns with the same examples measured are resampled together (usually all).
    groups: dict[bytes, list[int]] = {}
    for col in range(data.shape[1]):
        if finite[:, col].sum() >= 2:
            groups.setdefault(finite[:, col].tobytes(), []).append(col)
        elif finite[:, col].sum() == 1:
            raise ValueError(
                f"column {np.unravel_index(col, tuple(shape))} has 1 measured example; a "
                "bootstrap interval needs at least 2"
            )
    for cols in groups.values():
        rows = finite[:, cols[0]]
        x = data[rows][:, cols]
        constant = np.ptp(x, axis=0) == 0
        low[np.array(cols)[constant]] = x[0, constant]
        high[np.array(cols)[constant]] = x[0, constant]
        varying = np.array(cols)[~constant]
        if varying.size == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = scipy.stats.bootstrap(
                (x[:, ~constant],),
                np.mean,
                n_resamples=n_boot,
                vectorized=True,
                axis=0,
                confidence_level=level,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low[varying] = res.confidence_interval.low
        high[varying] = res.confidence_interval.high
    return (
        torch.from_numpy(low).float().reshape(shape),
        torch.from_numpy(high).float().reshape(shape),
    )


__all__ = ["METHODS", "bootstrap_ci"]
