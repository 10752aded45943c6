"""The seeded, stratified train/test split for datasets that come without one."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence

from engine.data.images import natural_key


def split_seeded(
    samples: Sequence, groups: Sequence[Hashable], test_ratio: float, seed: int
) -> tuple[list, list]:
    """Split per group (class): round(n * test_ratio) of each goes to test, at least one where
    the group has two or more samples and always at least one stays in train.

    The result depends only on the samples' paths, the ratio and the seed, never on the order
    the files were listed in, so a dataset splits the same way on every machine.
    """
    by_group: dict[Hashable, list] = defaultdict(list)
    for sample, group in zip(samples, groups):
        by_group[group].append(sample)
    rng = random.Random(seed)  # Python's shuffle is stable across versions and platforms
    train, test = [], []
    for group in sorted(by_group, key=lambda g: natural_key(str(g))):
        items = sorted(by_group[group], key=lambda s: natural_key(s.path))
        rng.shuffle(items)
        n = len(items)
        n_test = min(max(round(n * test_ratio), 1), n - 1) if n >= 2 else 0
        test += items[:n_test]
        train += items[n_test:]
    order = lambda s: natural_key(s.path)  # noqa: E731
    return sorted(train, key=order), sorted(test, key=order)


def detection_groups(samples: Sequence, num_classes: int) -> list[int]:
    """One stratum per image: its rarest class (so rare classes reach the test split), -1 for
    background images."""
    totals = [0] * num_classes
    for s in samples:
        for label in s.labels:
            totals[int(label)] += 1
    groups = []
    for s in samples:
        labels = {int(label) for label in s.labels}
        groups.append(min(labels, key=lambda c: (totals[c], c)) if labels else -1)
    return groups
