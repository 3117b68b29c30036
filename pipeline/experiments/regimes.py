"""The rule that fixes each embedded setting from the teacher's and the ceiling's accuracies alone.

``docs/demo.md`` ("The rule that fixes each setting") states it and cites where each number comes
from; this module is that rule as code, so the demos choose with it and a test checks every shipped
result against it. No function here looks at a student: the rule is fixed before students are run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PAPER_RATIO = (1.10, 1.45)  # err_teacher / err_ceiling of the paper's pairs (docs/demo.md, rule 1)
PAPER_TARGET = 1.25  # the middle of that range: the chosen teacher is the qualifying one closest to it
FIT_TRAIN_ACC = 0.98  # the ceiling fits its training images, as a CIFAR-100 student does in 240 epochs
EPOCH_LADDER = (20, 40, 80)
IMAGES_PER_CLASS = 500  # CIFAR-100's
TEACHER_ONLY_RATIO = 1.5  # clearly weaker than the ceiling (rule 2)
WEAKER_RATIO = PAPER_RATIO[0]  # noisy labels and few-shot: weaker than the student can be (rule 4)
SEEDS = (0, 1, 2, 3, 4)
ALPHA = 0.05  # family-wise, Holm-Bonferroni over each table's comparisons


def error_ratio(teacher_acc: float, ceiling_acc: float) -> float:
    """``r = err_teacher / err_ceiling`` with ``err = 1 - accuracy`` (accuracies in [0, 1])."""
    for name, acc in (("teacher", teacher_acc), ("ceiling", ceiling_acc)):
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"{name} accuracy {acc} is not in [0, 1]")
    if ceiling_acc >= 1.0:
        raise ValueError("a ceiling with no test errors leaves the error ratio undefined")
    return (1.0 - teacher_acc) / (1.0 - ceiling_acc)


def far_from_chance(teacher_acc: float, ceiling_acc: float, num_classes: int) -> bool:
    """Rule 2's second half: the teacher holds at least half of the ceiling's margin over chance."""
    chance = 1.0 / num_classes
    return teacher_acc >= chance + 0.5 * (ceiling_acc - chance)


def paper_regime(teacher_acc: float, ceiling_acc: float) -> bool:
    """Rule 1: the teacher's error is 1.10-1.45 times the ceiling's, as in the paper's pairs."""
    low, high = PAPER_RATIO
    return low <= error_ratio(teacher_acc, ceiling_acc) <= high


def ceiling_fits(train_acc: float) -> bool:
    """Rule 1's training regime: the ceiling's last-epoch training accuracy is at least 0.98."""
    return train_acc >= FIT_TRAIN_ACC


def teacher_only_regime(teacher_acc: float, ceiling_acc: float, num_classes: int) -> bool:
    """Rule 2 (and 3): clearly weaker than the ceiling, far from chance."""
    return (error_ratio(teacher_acc, ceiling_acc) >= TEACHER_ONLY_RATIO
            and far_from_chance(teacher_acc, ceiling_acc, num_classes))


def weaker_than_student(teacher_acc: float, ceiling_acc: float, num_classes: int) -> bool:
    """Rule 4 (noisy labels, few-shot): weaker than the student's ceiling, far from chance."""
    return (error_ratio(teacher_acc, ceiling_acc) >= WEAKER_RATIO
            and far_from_chance(teacher_acc, ceiling_acc, num_classes))


def fit_epochs(train_acc_by_epochs: dict[int, float]) -> int:
    """Rule 1: the smallest epochs of the ladder at which the seed-0 ceiling fits; the largest if none does."""
    for epochs in EPOCH_LADDER:
        if epochs in train_acc_by_epochs and ceiling_fits(train_acc_by_epochs[epochs]):
            return epochs
    return EPOCH_LADDER[-1]


@dataclass(frozen=True)
class Candidate:
    """A candidate weak teacher (model and epochs) with its seed-0 test accuracy."""

    name: str
    test_acc: float


def choose_teacher(candidates: Sequence[Candidate], ceiling_acc: float) -> Candidate | None:
    """Rule 1: the candidate in range whose ratio is closest to 1.25; ties go to the earlier one; None if none is."""
    best: Candidate | None = None
    for c in candidates:
        if not paper_regime(c.test_acc, ceiling_acc):
            continue
        if best is None or (abs(error_ratio(c.test_acc, ceiling_acc) - PAPER_TARGET)
                            < abs(error_ratio(best.test_acc, ceiling_acc) - PAPER_TARGET)):
            best = c
    return best
