"""From raw answers to training data (``rlxf label export``, and the admin API's export).

The answers stay raw in the database, one per labeller; aggregation happens here, at export:

* ``preferences`` from a **pairwise** project: per item, the response with more votes is ``chosen``
  (majority). ``tie`` and ``both_bad`` votes go to neither response; they still count in
  ``margin = (votes for chosen - votes for rejected) / all votes``, so a pair most people called a tie
  gets a small margin. Items where neither response has more votes are dropped.
* ``preferences`` from a **ranking** project: per item, Bradley-Terry strengths fitted to every
  labeller's ranking (each ranking counts as the pairwise wins it implies) by the MM algorithm of
  Hunter (2004), with one virtual comparison per pair split half and half (a weak prior that keeps the
  strengths finite when a response never loses, e.g. with a single labeller). Records pair the strongest
  response with each other one (k-1 pairs per item: all pairs would repeat the best one's comparisons
  and weigh items with long lists more); ``margin`` is ``(p_best - p_other) / (p_best + p_other)``, the
  fitted win probability minus the loss probability.
* ``ratings`` from a **rating** project: one record per (item, response, aspect) with the mean rating.
* ``raw`` (any project): one line per answer with the labeller, the display order, the answer as sent
  and in original indices, the reason and the time.

Items with fewer than ``min_labels`` answers (default: the project's k) are skipped, except in ``raw``.
Records carry the fields of docs/design.md's formats (rlxf's readers read them back) plus ``id`` (the item's
input id or its database id) and ``num_labels``.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlxf.feedback.label.db import Answer, Item, Project, User
from rlxf.feedback.label.schema import EXPORT_FORMATS

FORMAT_KINDS = {
    "preferences": ("pairwise", "ranking"),
    "ratings": ("rating",),
    "raw": ("pairwise", "ranking", "rating"),
}


def bradley_terry(
    rankings: list[list[int]], num_items: int, prior: float = 0.5, iterations: int = 1000, tol: float = 1e-10
) -> list[float]:
    """Bradley-Terry strengths (summing to 1) of ``num_items`` responses from rankings (best first).

    MM algorithm (Hunter 2004, eq. 3): ``p_i <- W_i / sum_j n_ij / (p_i + p_j)``, where ``W_i`` counts
    i's wins and ``n_ij`` the comparisons of i and j; ``prior`` adds that many wins to each side of every
    pair (so ``n_ij`` grows by ``2 * prior``).
    """
    wins = [[0.0] * num_items for _ in range(num_items)]  # wins[i][j]: times i was ranked above j
    for ranking in rankings:
        for a, b in combinations(ranking, 2):
            wins[a][b] += 1
    for i, j in combinations(range(num_items), 2):
        wins[i][j] += prior
        wins[j][i] += prior
    p = [1.0 / num_items] * num_items
    for _ in range(iterations):
        new = []
        for i in range(num_items):
            w = sum(wins[i])
            denominator = sum((wins[i][j] + wins[j][i]) / (p[i] + p[j]) for j in range(num_items) if j != i)
            new.append(w / denominator if denominator else p[i])
        total = sum(new)
        new = [x / total for x in new]
        change = max(abs(a - b) for a, b in zip(new, p))
        p = new
        if change < tol:
            break
    return p


def _answers_by_item(db: Session, project: Project) -> dict[int, list[Answer]]:
    by_item: dict[int, list[Answer]] = defaultdict(list)
    for answer in db.scalars(select(Answer).where(Answer.project_id == project.id).order_by(Answer.id)):
        by_item[answer.item_id].append(answer)
    return by_item


def _item_id(item: Item) -> str:
    return item.external_id if item.external_id is not None else str(item.id)


def pairwise_record(item: Item, answers: list[Answer]) -> dict[str, Any] | None:
    """The majority preference of one pairwise item, or None when neither response has more votes."""
    votes = [0, 0]
    for answer in answers:
        choice = answer.value["choice"]
        if choice in (0, 1):
            votes[choice] += 1
    if votes[0] == votes[1]:
        return None
    chosen = 0 if votes[0] > votes[1] else 1
    return {
        "prompt": item.prompt,
        "chosen": item.responses[chosen],
        "rejected": item.responses[1 - chosen],
        "margin": (votes[chosen] - votes[1 - chosen]) / len(answers),
        "id": _item_id(item),
        "num_labels": len(answers),
    }


def ranking_records(item: Item, answers: list[Answer]) -> list[dict[str, Any]]:
    """The strongest response against each other one (Bradley-Terry strengths of the item's rankings)."""
    strengths = bradley_terry([a.value["ranking"] for a in answers], len(item.responses))
    best = max(range(len(strengths)), key=lambda i: strengths[i])
    records = []
    for other in sorted(range(len(strengths)), key=lambda i: -strengths[i]):
        if other == best:
            continue
        p_best, p_other = strengths[best], strengths[other]
        records.append(
            {
                "prompt": item.prompt,
                "chosen": item.responses[best],
                "rejected": item.responses[other],
                "margin": (p_best - p_other) / (p_best + p_other),
                "id": _item_id(item),
                "num_labels": len(answers),
            }
        )
    return records


def rating_records(item: Item, answers: list[Answer], aspects: list[str]) -> list[dict[str, Any]]:
    """Mean rating of each (response, aspect) of one item."""
    records = []
    for index, completion in enumerate(item.responses):
        for aspect in aspects:
            ratings = [a.value["ratings"][index][aspect] for a in answers]
            records.append(
                {
                    "prompt": item.prompt,
                    "completion": completion,
                    "rating": sum(ratings) / len(ratings),
                    "aspect": aspect,
                    "id": _item_id(item),
                    "num_labels": len(ratings),
                }
            )
    return records


def export_records(
    db: Session, project: Project, format: str, min_labels: int | None = None
) -> list[dict[str, Any]]:
    """The project's answers as records of ``format`` (see the module docstring)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    if project.kind not in FORMAT_KINDS[format]:
        hint = "preferences" if project.kind != "rating" else "ratings"
        raise ValueError(f"a {project.kind} project exports as {hint} or raw, not {format}")
    items = {item.id: item for item in db.scalars(select(Item).where(Item.project_id == project.id))}
    by_item = _answers_by_item(db, project)
    if format == "raw":
        names = {user_id: name for user_id, name in db.execute(select(User.id, User.username))}
        return [
            {
                "project": project.name,
                "item_id": answer.item_id,
                "id": _item_id(items[answer.item_id]),
                "prompt": items[answer.item_id].prompt,
                "responses": items[answer.item_id].responses,
                "labeller": names[answer.user_id],
                "display_order": answer.display_order,
                "answer": answer.raw,
                "value": answer.value,
                "reason": answer.reason,
                "time": answer.created_at.isoformat() + "Z",
                "client_id": answer.client_id,
            }
            for item_id in sorted(by_item, key=lambda i: items[i].position)
            for answer in by_item[item_id]
        ]
    least = min_labels if min_labels is not None else project.labels_per_item
    records: list[dict[str, Any]] = []
    for item in sorted(items.values(), key=lambda i: i.position):
        answers = by_item.get(item.id, [])
        if len(answers) < max(least, 1):
            continue
        if project.kind == "pairwise":
            record = pairwise_record(item, answers)
            records.extend([record] if record else [])
        elif project.kind == "ranking":
            records.extend(ranking_records(item, answers))
        else:
            records.extend(rating_records(item, answers, project.aspects))
    return records
