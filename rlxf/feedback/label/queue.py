"""The labeller's queue: which item ``GET /api/projects/{id}/next`` serves, and each labeller's progress.

The queue gives a labeller the items they have not answered that are still short of k labels, fewest
first, then a per-labeller pseudo-random order (a multiplicative hash of item and labeller computed in
SQL, so the query stays one statement on SQLite and PostgreSQL alike), stable across reloads.

**Over-labelling bound.** ``next`` leases the item it serves to the labeller for :data:`ITEM_LEASE`; an
item leased to others or answered counts towards its k, so two labellers are not sent the last free slot
of one item. Leases and answers of one item are written under that item's lock (SQLite: its one writer;
PostgreSQL: :func:`~rlxf.feedback.label.db.lock_item`, see :func:`_claim`), and an answer to an item
that has k answers already is refused (409): an item never has more than k labels, even across several servers on one database. A
labeller who leaves an item unanswered past its lease loses the slot to the next labeller; their answer
is still taken while the item is short of k.

Left out: priorities between projects, and giving an item back before its lease ends (a closed tab
cannot say it left).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from sqlalchemy import BigInteger, and_, cast, exists, func, select
from sqlalchemy.orm import Session

from rlxf.feedback.label.db import (
    Answer,
    DisplayOrder,
    Item,
    Project,
    User,
    begin_write,
    lock_item,
    try_lock_item,
    utcnow,
)

# The per-labeller queue order: a multiplicative hash of (item, labeller) modulo a prime.
_HASH_ITEM, _HASH_USER, _HASH_MOD = 2654435761, 40503, 1_000_003
ITEM_LEASE = dt.timedelta(minutes=20)  # how long a served item stays reserved for its labeller


def answer_counts(project_id: int) -> Any:
    """A subquery: ``item_id`` -> number of answers, for the items of one project that have any."""
    return (
        select(Answer.item_id, func.count().label("n"))
        .where(Answer.project_id == project_id)
        .group_by(Answer.item_id)
        .subquery()
    )


def lease_counts(project_id: int, user_id: int, now: dt.datetime) -> Any:
    """A subquery: ``item_id`` -> items leased to labellers other than ``user_id`` and not answered yet
    (a lease ends when its labeller answers: ``leased_until`` is cleared)."""
    return (
        select(DisplayOrder.item_id, func.count().label("n"))
        .join(Item, Item.id == DisplayOrder.item_id)
        .where(
            Item.project_id == project_id, DisplayOrder.user_id != user_id, DisplayOrder.leased_until > now
        )
        .group_by(DisplayOrder.item_id)
        .subquery()
    )


def queue_query(project: Project, user_id: int, now: dt.datetime | None = None) -> Any:
    """The labeller's queue, best first: items not answered by them whose answers plus leases to other
    labellers are below k, fewest first, then a per-labeller pseudo-random order (stable, so a reload
    shows the same item)."""
    now = now or utcnow()
    answers, leases = answer_counts(project.id), lease_counts(project.id, user_id, now)
    taken = func.coalesce(answers.c.n, 0) + func.coalesce(leases.c.n, 0)
    mine = exists().where(and_(Answer.item_id == Item.id, Answer.user_id == user_id))
    return (
        select(Item)
        .outerjoin(answers, answers.c.item_id == Item.id)
        .outerjoin(leases, leases.c.item_id == Item.id)
        .where(Item.project_id == project.id, ~mine, taken < project.labels_per_item)
        .order_by(taken, (cast(Item.id, BigInteger) * _HASH_ITEM + user_id * _HASH_USER) % _HASH_MOD, Item.id)
    )


def held_item(db: Session, project: Project, user_id: int, now: dt.datetime) -> Item | None:
    """The item this labeller was served and has not answered, while its lease runs (a reload shows it
    again without taking the write lock)."""
    query = (
        select(Item)
        .join(DisplayOrder, and_(DisplayOrder.item_id == Item.id, DisplayOrder.user_id == user_id))
        .where(Item.project_id == project.id, DisplayOrder.leased_until > now)
        .order_by(DisplayOrder.leased_until)
    )
    return db.scalars(query.limit(1)).first()


def assign_next(db: Session, project: Project, user_id: int) -> Item | None:
    """Lease the head of the labeller's queue to them and store their display order on first view, in one
    write transaction (so two labellers never take the last free slot of one item); None when the queue
    is empty. SQLite has one writer: the head of the queue is free. PostgreSQL: :func:`_claim`."""
    begin_write(db)
    now = utcnow()
    if db.get_bind().dialect.name == "postgresql":
        item = _claim(db, project, user_id, now)
    else:
        item = db.scalars(queue_query(project, user_id, now).limit(1)).first()
    if item is not None:
        row = db.get(DisplayOrder, (item.id, user_id))
        if row is None:
            permutation = list(range(len(item.responses)))
            random.SystemRandom().shuffle(permutation)
            db.add(
                DisplayOrder(
                    item_id=item.id, user_id=user_id, permutation=permutation, leased_until=now + ITEM_LEASE
                )
            )
        else:  # shown before, its lease ran out: the same order again, a new lease
            row.leased_until = now + ITEM_LEASE
    db.commit()
    return item


CANDIDATES = 8  # queue items one PostgreSQL assignment looks at before it looks again


def _claim(db: Session, project: Project, user_id: int, now: dt.datetime) -> Item | None:
    """The first of the queue's head items that this transaction can lock (a non-blocking advisory lock,
    the one answers to the item take) and that still has a free slot once locked.

    Every lease and answer of an item is written under its lock, so the count re-read under it is exact;
    labellers see the queue in different orders, so they rarely want the same item, and none waits for
    another's assignment. Only when every head item is busy does it start over in a fresh transaction
    (holding no lock) and wait for the first one: waiting while holding none cannot deadlock.
    """
    for _look in range(2):  # the head of the queue, twice, without waiting for anyone
        candidates = db.scalars(queue_query(project, user_id, now).limit(CANDIDATES)).all()
        if not candidates:
            return None
        for item in candidates:
            if try_lock_item(db, item.id) and free_slots(db, project, item.id, user_id, now) > 0:
                return item
        db.rollback()  # nothing claimed: let go of the locks taken, look at the queue again
        begin_write(db)
        now = utcnow()
    for item in candidates:  # all busy twice: wait for each in turn, in a transaction holding no other lock
        lock_item(db, item.id)
        if free_slots(db, project, item.id, user_id, now) > 0:
            return item
        db.rollback()
        begin_write(db)
        now = utcnow()
    return None


def free_slots(db: Session, project: Project, item_id: int, user_id: int, now: dt.datetime) -> int:
    """k minus the item's answers and its active leases to labellers other than ``user_id``."""
    answers = select(func.count()).select_from(Answer).where(Answer.item_id == item_id).scalar_subquery()
    leases = (
        select(func.count())
        .select_from(DisplayOrder)
        .where(
            DisplayOrder.item_id == item_id, DisplayOrder.user_id != user_id, DisplayOrder.leased_until > now
        )
        .scalar_subquery()
    )
    return project.labels_per_item - db.scalar(select(answers + leases))


def progress(db: Session, project: Project, user: User) -> dict[str, int]:
    """A labeller: their answers / (their answers + their queue). An admin: items with k labels / all items."""
    if user.is_admin:
        counts = answer_counts(project.id)
        done = db.scalar(
            select(func.count()).select_from(counts).where(counts.c.n >= project.labels_per_item)
        )
        total = db.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id))
        return {"done": done or 0, "total": total or 0}
    done = db.scalar(
        select(func.count())
        .select_from(Answer)
        .where(Answer.project_id == project.id, Answer.user_id == user.id)
    )
    waiting = db.scalar(
        select(func.count()).select_from(queue_query(project, user.id).order_by(None).subquery())
    )
    return {"done": done or 0, "total": (done or 0) + (waiting or 0)}
