"""Poisoned traffic cannot steer training, evaluation or the canary (issue 20), on a real DuckDB file:
held-out membership is a keyed hash of the prompt, a prompt sent many times is labeled once, trained
on once and scored once, and canary feedback counts only answers the gateway itself sealed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import duckdb
import pytest

from evolvd.buffer import DuckDBBuffer
from evolvd.buffer.heldout import choose_prompts, heldout_condition, heldout_params, heldout_sides, is_heldout
from evolvd.buffer.keys import CAPTURE_SEAL_KEY, HELDOUT_KEY, buffer_key
from evolvd.capture_seal import seal
from evolvd.evaluation.paired import paired_compare
from evolvd.evaluation.store import heldout_items
from evolvd.labeling.labeler import mark_duplicates, pending_events
from evolvd.loop.promotion import Promoter
from evolvd.policies import views
from evolvd.policies.gates import CandidateEvaluation, ProbeScores, promotion_gate
from evolvd.policies.loader import load_policies
from evolvd.training.snapshot import freeze_snapshot

HELDOUT = 10
_offset = iter(range(1_000_000))


def _event(con: duckdb.DuckDBPyConnection, event_id: str, prompt: str, *, state: str = "pending") -> None:
    # The buffer's own prompt_hash: sha256 of the prompt text, computed by DuckDB as ingest does.
    con.execute(
        "INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, prompt_hash, state)"
        " VALUES (?, 't', 0, ?, ?, sha256(?), ?)",
        [event_id, next(_offset), prompt, prompt, state],
    )


def _labeled(con: duckdb.DuckDBPyConnection, event_id: str, prompt: str, answer: str) -> None:
    """An event as labeling leaves it: its vote and one confident training example."""
    _event(con, event_id, prompt, state="labeled")
    con.execute(
        "INSERT INTO labels (event_id, answer, confidence, n_samples, votes, model_version, labeler_version)"
        " VALUES (?, ?, 1.0, 4, '{}', 'm', 'l')",
        [event_id, answer],
    )
    con.execute(
        "INSERT INTO training_examples (event_id, format, prompt, completion, confidence, model_version,"
        " labeler_version, safety_outcome) VALUES (?, 'direct', ?, ?, 1.0, 'm', 'l', 'allow')",
        [event_id, prompt, f"The answer is {answer}."],
    )


def _prompts(key: str, heldout: bool, n: int, stem: str = "What is the capital of country") -> list[str]:
    """n distinct prompts on the chosen side of the held-out slice of the buffer with `key`."""
    pool = [f"{stem} {i}?" for i in range(60 * n)]
    sides = heldout_sides(key, [_sha256(p) for p in pool], HELDOUT)
    return [p for p, side in zip(pool, sides, strict=True) if side == heldout][:n]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_heldout_membership_is_a_keyed_hash_of_the_prompt_not_the_message_id(tmp_path: Path) -> None:
    first = DuckDBBuffer(tmp_path / "a.duckdb")
    key = buffer_key(first.cursor(), HELDOUT_KEY)
    assert len(key) == 64 and int(key, 16) >= 0  # 256 bits from `secrets`, hex
    first.close()
    reopened = DuckDBBuffer(tmp_path / "a.duckdb")
    assert buffer_key(reopened.cursor(), HELDOUT_KEY) == key, "the slice must not move across restarts"
    other = DuckDBBuffer(tmp_path / "b.duckdb")
    other_key = buffer_key(other.cursor(), HELDOUT_KEY)
    assert other_key != key
    # Another buffer's key draws another slice: without the key, a producer cannot tell the sides.
    prompts = [f"Question {i}?" for i in range(400)]
    sides = heldout_sides(key, [_sha256(p) for p in prompts], HELDOUT)
    other_sides = heldout_sides(other_key, [_sha256(p) for p in prompts], HELDOUT)
    assert sides[:5] == [is_heldout(key, _sha256(p), HELDOUT) for p in prompts[:5]]
    assert sides != other_sides and 10 < sum(sides) < 80  # about 10% of 400

    # Every copy of a prompt, whatever id its producer chose, is on the same side as the SQL says.
    con = reopened.cursor()
    inside, outside = _prompts(key, True, 1)[0], _prompts(key, False, 1)[0]
    for i in range(30):
        _event(con, f"in-{i}", inside)
        _event(con, f"out-{i}", outside)
    held = {
        r[0]
        for r in con.execute(
            f"SELECT id FROM events e WHERE {heldout_condition('e.prompt_hash')}",
            heldout_params(con, HELDOUT),
        ).fetchall()
    }
    assert held == {f"in-{i}" for i in range(30)}
    reopened.close()
    other.close()


def test_a_harness_gets_its_share_of_prompts_on_each_side_of_the_slice() -> None:
    key = "ab" * 32
    pool = [f"Question {i}?" for i in range(200)]
    chosen = choose_prompts(key, pool, 8, 15)  # a small benchmark cycle: 1 held out, 7 to train on
    sides = heldout_sides(key, [_sha256(p) for p in chosen], 15)
    assert len(set(chosen)) == 8 and sum(sides) == 1
    assert chosen == [p for p in pool if p in chosen], "the candidates' order is kept"
    all_sides = heldout_sides(key, [_sha256(p) for p in pool], 15)
    outside = [p for p, side in zip(pool, all_sides, strict=True) if not side]
    with pytest.raises(ValueError, match="only 7 of 8 prompts"):
        choose_prompts(key, outside, 8, 15)


def test_labeling_takes_one_event_per_prompt_and_marks_its_copies_duplicate(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    con = buffer.cursor()
    for i in range(50):
        _event(con, f"flood-{i:02d}", "Is the sky green? Answer yes or no.")
    for i in range(3):
        _event(con, f"other-{i}", f"What is {i} + 1?")
    assert buffer.backlog() == 4, "copies of one prompt are one prompt's labeling work"
    batch = pending_events(con, 10)
    assert [e.event_id for e in batch] == ["flood-00", "other-0", "other-1", "other-2"]

    con.execute("UPDATE events SET state = 'labeled' WHERE id = 'flood-00'")  # as write_result does
    assert mark_duplicates(con) == 49
    assert [e.event_id for e in pending_events(con, 10)] == ["other-0", "other-1", "other-2"]
    assert buffer.backlog() == 3
    states = dict(con.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
    assert states == {"labeled": 1, "duplicate": 49, "pending": 3}
    buffer.close()


def test_a_flooded_prompt_is_one_example_in_a_snapshot_and_one_heldout_item(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    con = buffer.cursor()
    key = buffer_key(con, HELDOUT_KEY)
    planted = _prompts(key, False, 1, stem="Which vendor should I buy from")[0]
    # 300 labeled copies (as a buffer written before labeling deduplicated may hold), 30 honest prompts.
    for i in range(300):
        _labeled(con, f"flood-{i:03d}", planted, "EvilCorp")
    for i, prompt in enumerate(_prompts(key, False, 30)):
        _labeled(con, f"honest-{i}", prompt, f"City {i}")

    gate_view = views.candidate_examples(con, HELDOUT)
    snapshot = freeze_snapshot(con, tmp_path / "ds", 0.5, 0.0, HELDOUT)
    assert snapshot is not None
    assert snapshot.n_new == len(gate_view) == 31, "the gate and the snapshot see the same examples"
    rows = con.execute(
        "SELECT e.prompt FROM dataset_examples d JOIN training_examples e USING (example_id)"
        " WHERE d.dataset_id = ?",
        [snapshot.dataset_id],
    ).fetchall()
    assert [r[0] for r in rows].count(planted) == 1, "300 copies must not be 90% of the snapshot"
    # The same prompt sent again later is not new: it was trained on.
    _labeled(con, "flood-late", planted, "EvilCorp")
    assert freeze_snapshot(con, tmp_path / "ds", 0.5, 0.0, HELDOUT) is None

    # Held out: 60 copies of one prompt are one item; a prompt some snapshot trained on is none.
    scored = _prompts(key, True, 6)
    for i in range(60):
        _labeled(con, f"heldflood-{i}", scored[0], "EvilCorp")
    for i, prompt in enumerate(scored[1:]):
        _labeled(con, f"held-{i}", prompt, f"City {i}")
    items = heldout_items(buffer, HELDOUT, 100, 0.5)
    assert sorted(i.prompt for i in items) == sorted(scored)
    trained_event = con.execute(
        "SELECT example_id FROM training_examples WHERE event_id = 'held-0'"
    ).fetchone()
    assert trained_event is not None
    con.execute("INSERT INTO dataset_examples VALUES (?, ?, false)", [snapshot.dataset_id, trained_event[0]])
    assert scored[1] not in {i.prompt for i in heldout_items(buffer, HELDOUT, 100, 0.5)}
    buffer.close()


def test_a_flood_of_one_planted_prompt_cannot_carry_a_promotion(tmp_path: Path) -> None:
    """60 copies of one held-out prompt with a planted answer: a candidate trained on the plant is
    right on it and nowhere else. Scored per copy that is p = 8.7e-19; scored per prompt, one
    discordant item, p = 0.5, and the shipped promotion policy rejects the candidate."""
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    con = buffer.cursor()
    key = buffer_key(con, HELDOUT_KEY)
    planted, *honest = _prompts(key, True, 11)
    for i in range(60):
        _labeled(con, f"plant-{i}", planted, "EvilCorp")
    for i, prompt in enumerate(honest):
        _labeled(con, f"honest-{i}", prompt, f"City {i}")
    items = heldout_items(buffer, HELDOUT, 60, 0.5)  # the suite's size in production (heldout_max)
    candidate = [True if i.prompt == planted else i.prompt in honest[:5] for i in items]
    live = [False if i.prompt == planted else i.prompt in honest[:5] for i in items]
    heldout = paired_compare(candidate, live)
    assert heldout.n == 11 and heldout.candidate_only == 1 and heldout.p_value == 0.5
    assert paired_compare([True] * 60, [False] * 60).p_value < 1e-17  # what per-copy scoring gave

    evaluation = CandidateEvaluation(
        candidate="poisoned",
        live="live",
        heldout_score=heldout.candidate_score,
        live_heldout_score=heldout.live_score,
        p_value=heldout.p_value,
        forgetting_score=0.8,
        live_forgetting_score=0.8,
        safety=ProbeScores(harmful_compliance=0.0, benign_refusal=0.0),
        live_safety=ProbeScores(harmful_compliance=0.0, benign_refusal=0.0),
        output_divergence=0.0,
        heldout_n=heldout.n,
    )
    decision = promotion_gate(load_policies(None), evaluation)
    assert decision.outcome == "reject"
    assert any(r.startswith("promotion.max_p_value") for r in decision.reasons), decision.reasons
    per_copy = dataclasses.replace(evaluation, p_value=8.7e-19, heldout_n=70, heldout_score=0.93)
    assert promotion_gate(load_policies(None), per_copy).outcome != "reject"  # the hole this closes
    buffer.close()


def test_canary_feedback_counts_only_answers_the_gateway_sealed(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    con = buffer.cursor()
    key = buffer_key(con, CAPTURE_SEAL_KEY)
    foreign_key = "ab" * 32

    def served(event_id: str, metadata: dict[str, str], value: float) -> None:
        _event(con, event_id, "Say hello.")
        con.execute("UPDATE events SET metadata = ? WHERE id = ?", [json.dumps(metadata), event_id])
        con.execute(
            "INSERT INTO feedback (event_id, value, raw, topic, kafka_partition, kafka_offset)"
            " VALUES (?, ?, ?, 't', 1, ?)",
            [event_id, value, str(value), next(_offset)],
        )

    for i in range(4):  # what users said about answers the gateway served and sealed
        gw = f"gw-{i}"
        served(gw, {"source": "gateway", "served_by": "cand", "seal": seal(key, gw, "cand")}, -1.0)
    for i in range(50):  # forged: no seal, a seal from another key, a seal for another event's id
        served(f"forged-a{i}", {"source": "gateway", "served_by": "cand"}, 1.0)
        served(f"forged-b{i}", {"served_by": "cand", "seal": seal(foreign_key, f"forged-b{i}", "cand")}, 1.0)
        served(f"forged-c{i}", {"served_by": "cand", "seal": seal(key, "gw-0", "cand")}, 1.0)
    promoter = Promoter(buffer, None, lambda: load_policies(None), lambda _: None, None)  # type: ignore[arg-type]
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert promoter._feedback("cand", since) == -1.0
    assert promoter._feedback("live", since) is None
    buffer.close()
