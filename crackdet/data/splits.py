"""Train/val/test splits: the reference notebook's interleaved split and a duplicate-aware one."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from crackdet.data.scan import ImageRecord
from crackdet.errors import ConfigError

Splits = dict[str, list[ImageRecord]]
#: The values of `data.split` (what each does: CrackDataModule).
SPLIT_MODES = ("seed", "stratified", "all")


def reference_split(records: Sequence[ImageRecord], train_fraction: float = 0.75) -> Splits:
    """The notebook's split: each class sorted by name, interleaved positive first, head is train.

    With 20,000 images per class this gives the first 30,000 interleaved files for training and
    the last 10,000 for validation; there is no test set.
    """
    positives = sorted((r for r in records if r.label == 1), key=lambda r: r.path)
    negatives = sorted((r for r in records if r.label == 0), key=lambda r: r.path)
    interleaved: list[ImageRecord] = []
    for i in range(max(len(positives), len(negatives))):
        interleaved.extend(group[i] for group in (positives, negatives) if i < len(group))
    cut = int(round(train_fraction * len(interleaved)))
    return {"train": interleaved[:cut], "val": interleaved[cut:], "test": []}


def duplicate_groups(records: Sequence[ImageRecord]) -> list[list[ImageRecord]]:
    """Records grouped by identical file bytes, in first-seen order; singletons included."""
    groups: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        groups[record.digest].append(record)
    return list(groups.values())


def check_fractions(fractions: Sequence[float]) -> None:
    """`data.fractions` must be three non-negative numbers (train, val, test) summing to 1."""
    values = list(fractions) if isinstance(fractions, Sequence) else [fractions]
    if (
        len(values) != 3
        or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in values)
        or any(f < 0 for f in values)
        or abs(sum(values) - 1) > 1e-6
    ):
        raise ConfigError(
            f"data.fractions={values} must be three non-negative numbers "
            "(train, val, test) summing to 1, e.g. data.fractions=[0.7,0.15,0.15]."
        )


def stratified_split(
    records: Sequence[ImageRecord], fractions: Sequence[float], seed: int
) -> tuple[Splits, int]:
    """Seeded train/val/test split, stratified by label, with byte-identical files kept together.

    Returns the splits and the number of duplicate groups (files sharing their bytes) found.
    """
    check_fractions(fractions)
    groups = duplicate_groups(records)
    n_duplicate_groups = sum(1 for g in groups if len(g) > 1)
    by_label: dict[int, list[list[ImageRecord]]] = defaultdict(list)
    for group in groups:
        # A file present in both classes goes with its majority label; ties go to crack.
        label = round(sum(r.label for r in group) / len(group) + 1e-9)
        by_label[label].append(group)

    rng = random.Random(seed)
    splits: Splits = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        label_groups = sorted(by_label[label], key=lambda g: min(r.path for r in g))
        rng.shuffle(label_groups)
        total = sum(len(g) for g in label_groups)
        targets = _integer_targets(total, fractions)
        assigned = {"train": 0, "val": 0, "test": 0}
        for group in label_groups:
            # Fill each split up to its target; a group never straddles two splits.
            name = next(
                (n for n in ("train", "val", "test") if assigned[n] + len(group) <= targets[n]),
                max(assigned, key=lambda n: targets[n] - assigned[n]),
            )
            splits[name].extend(group)
            assigned[name] += len(group)
    for name in splits:
        splits[name].sort(key=lambda r: r.path)
    return splits, n_duplicate_groups


def _integer_targets(total: int, fractions: Sequence[float]) -> dict[str, int]:
    """Split `total` into three integer counts proportional to `fractions`, summing to `total`."""
    train = int(round(fractions[0] * total))
    val = int(round(fractions[1] * total))
    val = min(val, total - train)
    return {"train": train, "val": val, "test": total - train - val}
