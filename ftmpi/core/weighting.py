"""Weights of the rows handed over when a worker is lost: one pure function per rule, and what each biases.

A survivor draws its minibatches in proportion to row weight (:class:`ftmpi.worker.localshard.LocalShard`), so a
row's weight is how many training rows it stands for. When a worker is lost, ``k`` draws are made among the
``n`` rows it owned (the *chosen* rows, :mod:`ftmpi.core.handoff`); the rules below say what each chosen row weighs
from then on. Two inputs describe the choice:

- ``own``: the chosen rows' weights before the loss (1 for a row of the initial split, more for a row that was
  itself handed over at an earlier loss);
- ``base``: weights that carry the lost shard's mass without bias, given by the policy. ``random`` draws in
  proportion to weight (:func:`ftmpi.core.handoff.pps_systematic`, inclusion ``k w_i / M``), so ``base`` is
  ``M / k`` per draw: the expected handed mass of every class and of every origin equals the shard's, after
  any sequence of losses, and the total is exact. ``coreset`` (:func:`ftmpi.kernels.select_coreset`) gives
  each centre its cluster's mass (per-class mass exact). ``loss`` / ``stratified`` get ``M / k`` per row,
  which is biased there (their rows are the hardest, not a random draw).

Rules (:data:`RULES`, ``optimizer.rep_weight``; :func:`handed_weights` dispatches by name):

- ``one``: ``own``. The handed rows add their own weight only: the lost shard's mass shrinks to about
  ``k / n`` of it, so its classes lose their share of the objective (biased towards the survivors' classes;
  the original system's rule).
- ``shard``: ``base``. Unbiased; the cost is variance (each row weighs ``M / k``, 20 at 5 %), which costs
  accuracy on iid shards (benchmarks/results/handoff_value.md).
- ``shard-legacy``: **for the study only** (the uniform baseline of benchmarks/handoff_value.py): a
  *uniform* draw (:func:`ftmpi.core.handoff.random_choice` ignores the weights under
  this rule) with ``mass / k`` for every row. The total is kept, but rows that weighed more than 1 are
  drawn no more often than the others, so the mass of the rows handed at an earlier loss falls to about
  ``k' / n'`` of it at the next.
- ``damped``: ``min(base, max(cap, own))`` with ``cap`` = :func:`remaining_draws` (how many times a row of
  weight 1 is still drawn before the end of training). Never below ``own``, never above ``base``: biased
  towards the survivors like ``one``, less so the more training is left; the handed mass is
  :func:`kept_fraction` of the unbiased one (about 3.6 / 20 = 18 % at 30 % of 800 iterations of 128 rows on
  a 20 000-row shard at 5 %).
- ``sqrt``: ``sqrt(own * base)``: the geometric mean of ``one`` and ``shard``; the lost shard keeps about
  ``sqrt(k / n)`` of its mass (22 % at 5 %).
- ``classmix`` (the default): every class keeps its share of the whole objective (survivors' rows plus handed
  rows) that it had before the loss, with the least handed mass at which each class's handed rows together keep at least
  their ``own`` mass. With ``S_c`` the survivors' mass of class ``c``, ``M_c`` the lost shard's and
  ``a_c`` the chosen rows' own mass: ``lam = max_c (S_c + a_c) / (S_c + M_c)`` (<= 1), class ``c``'s handed
  mass is ``H_c = lam (S_c + M_c) - S_c`` (between ``a_c`` and ``M_c``), shared among its chosen rows in
  proportion to ``base``. On an iid split (every class's ``S_c / M_c`` alike) ``lam`` is about
  ``(S + k) / (S + n)`` and each row weighs about ``own``; when the survivors hold a class the lost worker did
  not, ``lam = 1`` and ``H_c = M_c`` (per-class exact ``shard``). Bias: the class mix of the objective is
  exactly the one before the loss (for classes with a handed row), but within a class the lost worker's rows
  weigh less than the survivors' (by ``lam``): unbiased when a class's rows look alike on every worker (label
  skew), biased when they do not (feature skew). A class of the lost shard with no handed row loses its mass
  in every rule. It is the default because it does as well as ``shard`` on label-skew shards without
  ``shard``'s iid cost (the two-loss study: docs/NOTES.md, benchmarks/results/handoff_value.md).
"""
from __future__ import annotations

import math

import numpy as np

from ftmpi.config import RULES, SCORED, SELECTIONS  # noqa: F401  (names kept here; config.py needs them without numpy)


def remaining_draws(remaining_iterations: int, batch_size: int, shard_mass: float) -> float:
    """How many times a row of weight 1 is still drawn, on average, before the end of training: the
    remaining iterations' draws over the survivor's shard mass (its remaining epochs), at least 1.

    Args:
        remaining_iterations: Local iterations left for the survivor.
        batch_size: Rows per minibatch.
        shard_mass: The survivor's shard mass (row count when every weight is 1) once it holds the rows.

    Returns:
        The cap of the ``damped`` rule.
    """
    if shard_mass <= 0:
        return 1.0
    return max(1.0, remaining_iterations * batch_size / shard_mass)


def class_mass(y: np.ndarray, w: np.ndarray, n_classes: int) -> np.ndarray:
    """Total weight of each class, shape ``(n_classes,)`` float64."""
    return np.bincount(np.asarray(y, np.int64), weights=np.asarray(w, np.float64), minlength=n_classes)


def classmix(own: np.ndarray, base: np.ndarray, y: np.ndarray, dead_class_mass: np.ndarray,
             survivor_class_mass: np.ndarray) -> np.ndarray:
    """The ``classmix`` weights (module docstring).

    Args:
        own: The chosen rows' weights before the loss.
        base: Their unbiased weights (gives the split of a class's handed mass among its rows).
        y: Their labels.
        dead_class_mass: ``M_c``, the lost shard's mass per class (all its rows, not only the chosen).
        survivor_class_mass: ``S_c``, the survivors' mass per class before they take the rows.

    Returns:
        Float64 weights aligned with ``own``.
    """
    own, base = np.asarray(own, np.float64), np.asarray(base, np.float64)
    M, S = np.asarray(dead_class_mass, np.float64), np.asarray(survivor_class_mass, np.float64)
    y = np.asarray(y, np.int64)
    if len(own) == 0:
        return np.zeros(0, np.float64)
    n_classes = len(M)
    a = class_mass(y, own, n_classes)
    b = class_mass(y, base, n_classes)
    held = (S + M) > 0
    lam = float(np.max((S[held] + a[held]) / (S[held] + M[held]))) if held.any() else 1.0
    lam = min(lam, 1.0)
    H = np.maximum(lam * (S + M) - S, a)  # the max only guards against rounding
    out = own.copy()
    ok = b[y] > 0
    out[ok] = base[ok] * H[y[ok]] / b[y[ok]]
    return out


def handed_weights(rule: str, own: np.ndarray, base: np.ndarray, *, mass: float | None = None,
                   cap: float | None = None, y: np.ndarray | None = None,
                   dead_class_mass: np.ndarray | None = None,
                   survivor_class_mass: np.ndarray | None = None) -> np.ndarray:
    """Weights of the handed rows under rule ``rule`` (one of :data:`RULES`; see the module docstring).

    Args:
        rule: The rule's name.
        own: The chosen rows' weights before the loss.
        base: Their unbiased weights (``M/k`` per draw, or a coreset's cluster masses).
        mass: ``shard-legacy``: the lost shard's total weight.
        cap: ``damped``: the cap (:func:`remaining_draws`).
        y: ``classmix``: the chosen rows' labels.
        dead_class_mass: ``classmix``: the lost shard's mass per class.
        survivor_class_mass: ``classmix``: the survivors' mass per class.

    Returns:
        Float64 weights aligned with ``own``.

    Raises:
        ValueError: On an unknown rule, mismatched lengths, or an input the rule needs left out.
    """
    own, base = np.asarray(own, np.float64), np.asarray(base, np.float64)
    if own.shape != base.shape or own.ndim != 1:
        raise ValueError(f"own {own.shape} and base {base.shape} must be 1-D of equal length")

    def need(name: str, value: object) -> None:
        if value is None:
            raise ValueError(f"rep_weight {rule!r} needs {name}")

    if rule == "one":
        return own.copy()
    if rule == "shard":
        return base.copy()
    if rule == "shard-legacy":
        need("mass", mass)
        return np.full(len(own), float(mass) / len(own)) if len(own) else own.copy()
    if rule == "damped":
        need("cap", cap)
        return np.minimum(base, np.maximum(float(cap), own))
    if rule == "sqrt":
        return np.sqrt(own * base)
    if rule == "classmix":
        need("y", y)
        need("dead_class_mass", dead_class_mass)
        need("survivor_class_mass", survivor_class_mass)
        return classmix(own, base, y, dead_class_mass, survivor_class_mass)
    raise ValueError(f"unknown rep_weight {rule!r}; expected one of {RULES}")


def kept_fraction(weights: np.ndarray, base: np.ndarray) -> float:
    """The handed mass under a rule as a fraction of the unbiased one (1 for ``shard``; the bias of the
    others, in one number)."""
    total = float(np.sum(base))
    return float(np.sum(weights)) / total if total > 0 else math.nan
