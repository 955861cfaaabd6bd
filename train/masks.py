"""Complementary masks: each overlay's fan-in split among its kernels, every share balanced.

A complementary-sparse layer groups its ``L`` kernels into overlays of
``K`` kernels each (kernels ``g*K .. g*K + K - 1`` form overlay ``g``).
Within an overlay every fan-in position belongs to exactly one kernel, so
the overlay's non-zeros tile its fan-in once and the packer fills it
completely. Each kernel owns ``floor(F / K)`` or ``ceil(F / K)`` positions,
with exactly ``F mod K`` kernels at the larger share.
"""

from __future__ import annotations

import numpy as np

__all__ = ["random_assignment", "magnitude_assignment", "assignment_mask", "is_complementary"]


def _check(kernels: int, fan_in: int, kernels_per_overlay: int) -> None:
    for name, v in (("kernels", kernels), ("fan_in", fan_in),
                     ("kernels_per_overlay", kernels_per_overlay)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if kernels % kernels_per_overlay:
        raise ValueError(f"{kernels} kernels do not split into overlays of "
                         f"{kernels_per_overlay} (kernels_per_overlay must divide them)")
    if kernels_per_overlay > fan_in:
        raise ValueError(f"kernels_per_overlay {kernels_per_overlay} is more than the fan-in "
                         f"{fan_in}: some kernel would own no position")


def random_assignment(kernels: int, fan_in: int, kernels_per_overlay: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Each fan-in position's owner within its overlay, drawn at random.

    Returns
    -------
    numpy.ndarray
        int64 ``[kernels // K, fan_in]``: the owning kernel's place (0 to
        ``K - 1``) in its overlay.
    """
    _check(kernels, fan_in, kernels_per_overlay)
    K = kernels_per_overlay
    owner = np.empty((kernels // K, fan_in), dtype=np.int64)
    # Shares: the first F mod K places get the larger one; then a random permutation.
    share = np.repeat(np.arange(K), [fan_in // K + (j < fan_in % K) for j in range(K)])
    for g in range(kernels // K):
        owner[g] = share[rng.permutation(fan_in)]
    return owner


def magnitude_assignment(weights: np.ndarray, kernels_per_overlay: int) -> np.ndarray:
    """Each fan-in position's owner within its overlay, chosen by weight magnitude.

    Positions go to the kernel with the largest ``|w|`` for them, greedily
    from the largest magnitude of the overlay down, while the kernel has
    room: every kernel's share stays ``floor(F / K)`` or ``ceil(F / K)``
    (once ``F mod K`` kernels hold the larger share, the others are capped at
    the smaller), so every position finds an owner.

    Parameters
    ----------
    weights : numpy.ndarray
        ``[kernels, fan_in]`` (a conv's kernels flattened).
    kernels_per_overlay : int
        ``K``.

    Returns
    -------
    numpy.ndarray
        int64 ``[kernels // K, fan_in]`` as :func:`random_assignment`.
    """
    w = np.abs(np.asarray(weights, dtype=np.float64))
    if w.ndim != 2:
        raise ValueError(f"weights must be [kernels, fan_in], got shape {w.shape}")
    kernels, fan_in = w.shape
    _check(kernels, fan_in, kernels_per_overlay)
    K = kernels_per_overlay
    small, extra = divmod(fan_in, K)
    owner = np.full((kernels // K, fan_in), -1, dtype=np.int64)
    for g in range(kernels // K):
        block = w[g * K:(g + 1) * K]  # [K, F]
        # Largest magnitude first; ties to the lower position, then the lower kernel.
        order = np.lexsort((np.arange(K * fan_in) // fan_in, np.arange(K * fan_in) % fan_in,
                            -block.ravel()))
        count = np.zeros(K, dtype=np.int64)
        cap = np.full(K, small + (extra > 0), dtype=np.int64)
        at_large = 0
        row = owner[g]
        left = fan_in
        for flat in order:
            j, pos = divmod(int(flat), fan_in)
            if row[pos] >= 0 or count[j] >= cap[j]:
                continue
            row[pos] = j
            count[j] += 1
            left -= 1
            if extra and count[j] == small + 1:
                at_large += 1
                if at_large == extra:  # the larger shares are all given
                    cap[count < small + 1] = small
            if not left:
                break
    return owner


def assignment_mask(owner: np.ndarray, kernels_per_overlay: int) -> np.ndarray:
    """The 0/1 mask ``[kernels, fan_in]`` (float32) of an owner table."""
    owner = np.asarray(owner)
    K = kernels_per_overlay
    groups, fan_in = owner.shape
    mask = np.zeros((groups * K, fan_in), dtype=np.float32)
    for g in range(groups):
        mask[g * K + owner[g], np.arange(fan_in)] = 1.0
    return mask


def is_complementary(mask: np.ndarray, kernels_per_overlay: int) -> bool:
    """True when every overlay's kernels cover each fan-in position exactly once, with
    shares that differ by at most one."""
    m = np.asarray(mask).reshape(mask.shape[0], -1) != 0
    K = kernels_per_overlay
    if m.shape[0] % K:
        return False
    for g in range(m.shape[0] // K):
        block = m[g * K:(g + 1) * K]
        shares = block.sum(axis=1)
        if not np.all(block.sum(axis=0) == 1) or shares.max() - shares.min() > 1:
            return False
    return True
