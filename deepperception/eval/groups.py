"""The report groups of the official KVG-Bench scorer, in its order.

``evaluate.eval`` (thunlp/DeepPerception @ ae5e8a8) builds ``metrics.json`` as: ``"all"``,
``"seen domain"`` (category in the seen list), ``"unseen domain"`` (every other row), then one
entry per name in ``--all_categories`` in that order. Every group is micro-averaged over its rows,
in bench row order. Shared by scoring, bootstrap CIs and run comparison so they can never
disagree on membership.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALL = "all"
SEEN_DOMAIN = "seen domain"
UNSEEN_DOMAIN = "unseen domain"
DOMAIN_GROUPS = (ALL, SEEN_DOMAIN, UNSEEN_DOMAIN)

DEFAULT_SEEN: tuple[str, ...] = ("aircraft", "car", "reptilia", "bird", "food")
DEFAULT_ALL: tuple[str, ...] = DEFAULT_SEEN + ("dog", "mollusca", "mammal", "flower", "landmark")


def group_indices(
    categories: Sequence[str] | np.ndarray,
    seen_categories: Sequence[str],
    all_categories: Sequence[str],
) -> dict[str, np.ndarray]:
    """Row indices of every report group, in ``metrics.json`` key order (empty groups included).

    >>> g = group_indices(["car", "dog", "car"], ["car"], ["car", "dog", "flower"])
    >>> {k: v.tolist() for k, v in g.items()}
    {'all': [0, 1, 2], 'seen domain': [0, 2], 'unseen domain': [1], 'car': [0, 2], 'dog': [1], 'flower': []}
    """
    cats = np.asarray(categories, dtype=object)
    seen = np.isin(cats, np.asarray(list(seen_categories), dtype=object))
    out: dict[str, np.ndarray] = {
        ALL: np.arange(len(cats)),
        SEEN_DOMAIN: np.flatnonzero(seen),
        UNSEEN_DOMAIN: np.flatnonzero(~seen),
    }
    for c in dict.fromkeys(all_categories):  # the official dict comprehension drops repeats
        out[c] = np.flatnonzero(cats == c)
    return out


def groups_from_domains(
    categories: Sequence[str] | np.ndarray,
    domains: Sequence[str] | np.ndarray,
    category_order: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Groups rebuilt from a predictions table (``category`` and ``domain`` = seen/unseen columns).

    Categories follow ``category_order`` when given (e.g. the key order of a run's metrics.json),
    else first appearance.

    >>> g = groups_from_domains(["dog", "car"], ["unseen", "seen"])
    >>> {k: v.tolist() for k, v in g.items()}
    {'all': [0, 1], 'seen domain': [1], 'unseen domain': [0], 'dog': [0], 'car': [1]}
    """
    cats = np.asarray(categories, dtype=object)
    dom = np.asarray(domains, dtype=object)
    order = list(category_order) if category_order is not None else list(dict.fromkeys(cats.tolist()))
    out: dict[str, np.ndarray] = {
        ALL: np.arange(len(cats)),
        SEEN_DOMAIN: np.flatnonzero(dom == "seen"),
        UNSEEN_DOMAIN: np.flatnonzero(dom == "unseen"),
    }
    for c in order:
        out[c] = np.flatnonzero(cats == c)
    return out
