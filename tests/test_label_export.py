"""Agreement (hand-computed values and Krippendorff's own example), Bradley-Terry by hand, the export
formats read back by rlxf's readers, and the ``rlxf label`` commands end to end (user add, project
create with a bad line, push from a tiny model, export)."""

from __future__ import annotations

import json
import math

import pytest

from rlxf.cli import main
from rlxf.data import read_data
from rlxf.feedback.label.agreement import krippendorff_alpha, percent_agreement
from rlxf.feedback.label.auth import password_hasher
from rlxf.feedback.label.db import (
    Answer,
    DisplayOrder,
    Item,
    begin_write,
    init_db,
    make_engine,
    make_sessionmaker,
)
from rlxf.feedback.label.export import bradley_terry, export_records
from rlxf.feedback.label.projects import add_user, create_project
from rlxf.feedback.label.schema import Candidate, Settings

# ------------------------------------------------------------------------------------------ agreement


def test_alpha_and_percent_agreement_by_hand():
    # u1: a a; u2: a b. Coincidences o_aa = 2, o_ab = o_ba = 1; n = 4, n_a = 3, n_b = 1:
    # D_o = 2/4, D_e = 2 * 3 * 1 / (4 * 3) = 1/2 -> alpha = 0; one agreeing pair of two.
    units = {"u1": {"r1": "a", "r2": "a"}, "u2": {"r1": "a", "r2": "b"}}
    assert krippendorff_alpha(units) == pytest.approx(0.0, abs=1e-12)
    assert percent_agreement(units) == 0.5
    # u1: a a; u2: b b; u3: a b. o_aa = o_bb = 2, o_ab = o_ba = 1; n = 6, n_a = n_b = 3:
    # D_o = 2/6, D_e = 2 * 3 * 3 / (6 * 5) = 3/5 -> alpha = 1 - (1/3) / (3/5) = 4/9.
    units = {"u1": {1: "a", 2: "a"}, "u2": {1: "b", 2: "b"}, "u3": {1: "a", 2: "b"}}
    assert krippendorff_alpha(units) == pytest.approx(4 / 9)
    assert percent_agreement(units) == pytest.approx(2 / 3)
    # undefined cases: one label per unit, or one value only
    assert krippendorff_alpha({"u": {1: "a"}}) is None and percent_agreement({"u": {1: "a"}}) is None
    assert krippendorff_alpha({"u": {1: "a", 2: "a"}, "v": {1: "a", 2: "a"}}) is None


def test_alpha_on_krippendorffs_worked_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units
    (missing values blank); his published alphas are nominal 0.743, ordinal 0.815, interval 0.849."""
    rows = {
        "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    }
    units = {u: {r: rows[r][u] for r in rows if rows[r][u] is not None} for u in range(12)}
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)


# ------------------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_by_hand():
    # two responses, 0 above 1 in 3 of 4 rankings; with the half-win prior per side: wins 3.5 vs 1.5 in
    # 5 comparisons, and the MLE has p0 / (p0 + p1) = 3.5 / 5.
    p = bradley_terry([[0, 1], [0, 1], [0, 1], [1, 0]], 2)
    assert p[0] / (p[0] + p[1]) == pytest.approx(0.7, abs=1e-8)
    assert sum(p) == pytest.approx(1.0)
    # three responses: the fixed point satisfies the likelihood equations W_i = sum_j n_ij p_i / (p_i + p_j)
    rankings = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [2, 0, 1], [0, 1, 2]]
    p = bradley_terry(rankings, 3, prior=0.0)
    wins = [[0.0] * 3 for _ in range(3)]
    for ranking in rankings:
        for a in range(3):
            for b in range(a + 1, 3):
                wins[ranking[a]][ranking[b]] += 1
    for i in range(3):
        expected = sum((wins[i][j] + wins[j][i]) * p[i] / (p[i] + p[j]) for j in range(3) if j != i)
        assert sum(wins[i]) == pytest.approx(expected, rel=1e-6)
    assert p[0] > p[1] > p[2] or p[0] > p[2] > p[1]
    assert max(range(3), key=lambda i: p[i]) == 0
    # one ranking alone: finite strengths in its order (the prior keeps the loser above 0)
    p = bradley_terry([[2, 0, 1]], 3)
    assert p[2] > p[0] > p[1] > 0 and all(math.isfinite(x) for x in p)


# ------------------------------------------------------------------------------------------ export


def _answered_project(tmp_path, kind, responses, answers, k=1, **settings):
    """A project with one item and ``answers``: one value (original indices) per labeller."""
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    init_db(engine)
    db = make_sessionmaker(engine)()
    project = create_project(
        db, Settings(name="p", kind=kind, labels_per_item=k, **settings), [Candidate("q", responses)]
    )
    item = db.query(Item).one()
    for i, value in enumerate(answers):
        user = add_user(db, password_hasher(cheap=True), f"u{i}", "apricot-lantern-41")
        order = list(range(len(responses)))
        begin_write(db)
        db.add(DisplayOrder(item_id=item.id, user_id=user.id, permutation=order))
        db.add(
            Answer(
                client_id=f"c{i}",
                project_id=project.id,
                item_id=item.id,
                user_id=user.id,
                display_order=order,
                raw={"note": "as sent"},
                value=value,
                reason=f"because {i}",
            )
        )
    db.commit()
    return db, project


def _read_back(tmp_path, records, kind):
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return read_data(path, kind=kind).records


def test_pairwise_majority_and_the_min_labels_rule(tmp_path):
    votes = [{"choice": 1}, {"choice": 1}, {"choice": 0}, {"choice": "tie"}]
    db, project = _answered_project(tmp_path, "pairwise", ["a", "b"], votes, k=4)
    (record,) = _read_back(tmp_path, export_records(db, project, "preferences"), "preferences")
    assert (record["chosen"], record["rejected"]) == ("b", "a")
    assert record["margin"] == pytest.approx((2 - 1) / 4)
    db.expunge(project)  # a changed copy, not written back
    project.labels_per_item = 5  # the item has fewer than k answers now: skipped unless min_labels allows
    assert export_records(db, project, "preferences") == []
    assert len(export_records(db, project, "preferences", min_labels=4)) == 1
    with pytest.raises(ValueError, match="ratings"):
        export_records(db, project, "ratings")


def test_a_tied_pairwise_vote_is_dropped(tmp_path):
    db, project = _answered_project(tmp_path, "pairwise", ["a", "b"], [{"choice": 0}, {"choice": 1}], k=2)
    assert export_records(db, project, "preferences") == []


def test_ranking_exports_the_best_against_each_other(tmp_path):
    rankings = [{"ranking": [2, 0, 1]}, {"ranking": [2, 1, 0]}, {"ranking": [0, 2, 1]}]
    db, project = _answered_project(tmp_path, "ranking", ["r0", "r1", "r2"], rankings, k=3)
    records = _read_back(tmp_path, export_records(db, project, "preferences"), "preferences")
    assert [(r["chosen"], r["rejected"]) for r in records] == [("r2", "r0"), ("r2", "r1")]
    p = bradley_terry([r["ranking"] for r in rankings], 3)
    assert records[0]["margin"] == pytest.approx((p[2] - p[0]) / (p[2] + p[0]))
    assert 0 < records[0]["margin"] < records[1]["margin"] < 1


def test_ratings_export_the_mean_per_response_and_aspect(tmp_path):
    answers = [
        {"ratings": [{"helpful": 4, "safe": 5}, {"helpful": 1, "safe": 5}]},
        {"ratings": [{"helpful": 5, "safe": 4}, {"helpful": 2, "safe": 5}]},
    ]
    db, project = _answered_project(
        tmp_path, "rating", ["r0", "r1"], answers, k=2, aspects=["helpful", "safe"]
    )
    records = _read_back(tmp_path, export_records(db, project, "ratings"), "ratings")
    got = {(r["completion"], r["aspect"]): r["rating"] for r in records}
    assert got == {("r0", "helpful"): 4.5, ("r0", "safe"): 4.5, ("r1", "helpful"): 1.5, ("r1", "safe"): 5.0}


def test_raw_export_has_one_line_per_answer(tmp_path):
    db, project = _answered_project(
        tmp_path, "pairwise", ["a", "b"], [{"choice": 0}, {"choice": "both_bad"}], k=2
    )
    raw = export_records(db, project, "raw")
    assert [(r["labeller"], r["value"], r["reason"]) for r in raw] == [
        ("u0", {"choice": 0}, "because 0"),
        ("u1", {"choice": "both_bad"}, "because 1"),
    ]
    assert raw[0]["display_order"] == [0, 1] and raw[0]["answer"] == {"note": "as sent"}
    assert raw[0]["time"].endswith("Z") and raw[0]["prompt"] == "q"


# ------------------------------------------------------------------------------------------- commands


def test_label_commands_end_to_end(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/cli.db"
    (tmp_path / "pw").write_text("s3cret-password\n")
    assert (
        main(
            [
                "label",
                "user",
                "add",
                "--db",
                db,
                "--username",
                "root",
                "--password-file",
                str(tmp_path / "pw"),
                "--admin",
            ]
        )
        == 0
    )
    (tmp_path / "pw-ann").write_text("ann-password-7\n")
    ann = [
        "label",
        "user",
        "add",
        "--db",
        db,
        "--username",
        "ann",
        "--password-file",
        str(tmp_path / "pw-ann"),
    ]
    assert main(ann) == 0
    assert main(ann) == 2
    assert "taken" in capsys.readouterr().err
    # a password on the command line would show in `ps`: there is no such flag
    assert main(["label", "user", "add", "--db", db, "--username", "bo", "--password", "pw-bo-12345"]) == 2
    assert "--password" in capsys.readouterr().err

    data = tmp_path / "items.jsonl"
    data.write_text('{"prompt": "q1", "responses": ["a", "b"]}\n\n{"prompt": "q2", "responses": ["a"]}\n')
    args = ["label", "project", "create", "--db", db, "--name", "pp", "--data", str(data), "--member", "ann"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{data}, line 3, field 'responses'" in err and "exactly 2" in err
    data.write_text('{"prompt": "q1", "responses": ["a", "b"]}\n{"prompt": "q2", "responses": ["c", "d"]}\n')
    assert main(args + ["--labels-per-item", "0"]) == 2  # a bad setting: a config error
    assert "labels_per_item" in capsys.readouterr().err
    assert main(args) == 0

    engine = make_engine(db)
    with make_sessionmaker(engine)() as session:
        assert session.query(Item).count() == 2  # the failed attempts wrote nothing
        items = session.query(Item).order_by(Item.position).all()
        ann_id = 2
        begin_write(session)
        for i, item in enumerate(items):
            session.add(DisplayOrder(item_id=item.id, user_id=ann_id, permutation=[1, 0]))
            session.add(
                Answer(
                    client_id=f"c{i}",
                    project_id=item.project_id,
                    item_id=item.id,
                    user_id=ann_id,
                    display_order=[1, 0],
                    raw={"choice": "A"},
                    value={"choice": 1},
                )
            )
        session.commit()
    engine.dispose()
    out = tmp_path / "prefs.jsonl"
    assert main(["label", "export", "--db", db, "--project", "pp", "--out", str(out)]) == 0
    records = read_data(out, kind="preferences").records
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in records] == [
        ("q1", "b", "a"),
        ("q2", "d", "c"),
    ]
    assert main(["label", "export", "--db", db, "--project", "nope", "--out", str(out)]) == 2
    assert "no project called 'nope'" in capsys.readouterr().err


def test_label_push_generates_the_responses(tmp_path, tiny_model_dir):
    db = f"sqlite:///{tmp_path}/push.db"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The movie was"}\n{"prompt": "Our trip"}\n')
    args = ["label", "push", "--db", db, "--model", str(tiny_model_dir), "--prompts", str(prompts), "-n", "2"]
    args += ["--name", "pushed", "--max-new-tokens", "6", "--seed", "1"]
    assert main(args) == 0
    engine = make_engine(db)
    with make_sessionmaker(engine)() as session:
        items = session.query(Item).order_by(Item.position).all()
        assert [i.prompt for i in items] == ["The movie was", "Our trip"]
        assert all(len(i.responses) == 2 and all(r.strip() for r in i.responses) for i in items)
        assert items[0].meta["model"] == str(tiny_model_dir)
    engine.dispose()
    assert main([*args[:-4], "--name", "three", "-n", "3"]) == 2  # pairwise needs exactly 2
