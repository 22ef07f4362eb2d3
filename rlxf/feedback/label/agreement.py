"""Inter-annotator agreement of a labelling project: percent agreement and Krippendorff's alpha.

What counts as one label, by project kind (labels are in original response indices, so the random
display order does not matter):

* pairwise: the item's answer, one of ``0``, ``1`` (the preferred original response), ``"tie"``,
  ``"both_bad"``; **nominal** alpha.
* ranking: the item's **top choice** (the original index ranked first); nominal alpha. (The full order
  is used by the Bradley-Terry export; agreement on the winner is what a reader of the number expects.)
* rating: each (item, response, aspect) is a unit of its own, its labels the 1..N ratings; **ordinal**
  alpha over the value domain 1..N.

``percent_agreement`` pools the pairs: over every unit with two or more labels, the share of label pairs
(within a unit) that are equal. Alpha comes from the ``krippendorff`` package (coincidence matrices, the
definitions of Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"); it is ``None`` when no
unit has two labels or when every label is the same value (alpha is then undefined: 0/0).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping
from itertools import combinations
from typing import Any, Literal

import krippendorff
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlxf.feedback.label.db import Answer, Project

Level = Literal["nominal", "ordinal", "interval"]
Units = Mapping[Hashable, Mapping[Hashable, Any]]  # unit -> labeller -> label


def percent_agreement(units: Units) -> float | None:
    """Share of equal label pairs among the pairs within each unit with 2+ labels; None if there are none."""
    agreeing = total = 0
    for labels in units.values():
        for a, b in combinations(labels.values(), 2):
            total += 1
            agreeing += a == b
    return agreeing / total if total else None


def krippendorff_alpha(
    units: Units, level: Level = "nominal", domain: list[Any] | None = None
) -> float | None:
    """Krippendorff's alpha of ``units`` at ``level``; None when undefined (see the module docstring).

    Nominal labels may be any hashable values (coded as integers here); ordinal and interval labels must
    be numbers. ``domain``: every value a label may take (ordinal alpha weighs distances by it).
    """
    pairable = {unit: labels for unit, labels in units.items() if len(labels) >= 2}
    if not pairable:
        return None
    raters = sorted({rater for labels in pairable.values() for rater in labels}, key=str)
    if level == "nominal":
        values = sorted({v for labels in pairable.values() for v in labels.values()}, key=str)
        code = {v: float(i) for i, v in enumerate(values)}
        domain_codes = None
    else:
        code = None
        domain_codes = [float(v) for v in domain] if domain is not None else None
    data = np.full((len(raters), len(pairable)), np.nan)
    row = {rater: i for i, rater in enumerate(raters)}
    for j, labels in enumerate(pairable.values()):
        for rater, value in labels.items():
            data[row[rater], j] = code[value] if code is not None else float(value)
    try:
        alpha = krippendorff.alpha(
            reliability_data=data, level_of_measurement=level, value_domain=domain_codes
        )
    except ValueError:  # one value only: expected and observed disagreement are both 0
        return None
    return float(alpha) if math.isfinite(alpha) else None


def project_units(project: Project, answers: list[Answer]) -> Units:
    """The labels of a project's answers, by unit and labeller (see the module docstring)."""
    units: dict[Hashable, dict[Hashable, Any]] = defaultdict(dict)
    for answer in answers:
        if project.kind == "pairwise":
            units[answer.item_id][answer.user_id] = answer.value["choice"]
        elif project.kind == "ranking":
            units[answer.item_id][answer.user_id] = answer.value["ranking"][0]
        else:
            for index, ratings in enumerate(answer.value["ratings"]):
                for aspect, rating in ratings.items():
                    units[(answer.item_id, index, aspect)][answer.user_id] = rating
    return units


def project_agreement(db: Session, project: Project) -> dict[str, Any]:
    """The admin page's agreement figures: ``items_with_2plus``, ``percent_agreement``,
    ``krippendorff_alpha``, ``labels`` (answers) and ``labellers`` (people who answered)."""
    answers = list(db.scalars(select(Answer).where(Answer.project_id == project.id)))
    per_item: dict[int, int] = defaultdict(int)
    for answer in answers:
        per_item[answer.item_id] += 1
    units = project_units(project, answers)
    if project.kind == "rating":
        alpha = krippendorff_alpha(units, "ordinal", domain=list(range(1, project.scale + 1)))
    else:
        alpha = krippendorff_alpha(units, "nominal")
    return {
        "items_with_2plus": sum(1 for n in per_item.values() if n >= 2),
        "percent_agreement": percent_agreement(units),
        "krippendorff_alpha": alpha,
        "labels": len(answers),
        "labellers": len({a.user_id for a in answers}),
    }
