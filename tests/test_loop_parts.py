"""The loop's parts without a model, on a real DuckDB file and a real PostgreSQL database where they
touch the buffer: snapshots (held-out slice, replay, pairs, lineage rows), the paired test, the
reference checkers, and the scheduler's job store (pause survives a restart, a job never overlaps
itself, every run is a row)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from evolvd.buffer import Buffer
from evolvd.buffer.heldout import heldout_condition, heldout_params
from evolvd.config import JobSchedule, SchedulerConfig
from evolvd.config_file import ConfigError
from evolvd.evaluation.checkers import ReferenceItem, load_reference_set
from evolvd.evaluation.paired import paired_compare
from evolvd.loop.lineage import adapter_lineage
from evolvd.loop.scheduler import JobResult, LoopScheduler
from evolvd.policies.loader import probe_prompts, safety_anchor_examples
from evolvd.training.snapshot import freeze_snapshot, rows_for_share, stored_snapshot
from evolvd.training.spec import capped_steps

HELDOUT = 10


def _event(con, i: int, outcome: str = "allow", confidence: float = 0.8) -> None:  # type: ignore[no-untyped-def]
    con.execute(
        "INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, prompt_hash)"
        " VALUES (?, 't', ?, ?, ?, ?)",
        [f"ev{i}", i % 2, i, f"What is {i} + 1?", f"h{i}"],
    )
    con.execute(
        "INSERT INTO training_examples (event_id, format, prompt, completion, confidence, model_version,"
        " labeler_version, safety_outcome, safe_prompt, safe_completion)"
        " VALUES (?, 'direct', ?, ?, ?, 'm', 'l', ?, ?, ?)",
        [
            f"ev{i}",
            f"What is {i} + 1?",
            f"The answer is {i + 1}.",
            confidence,
            outcome,
            f"What is {i} + 1?" if outcome != "redact" else "What is [REDACTED] + 1?",
            f"The answer is {i + 1}.",
        ],
    )
    con.execute(
        "INSERT INTO preference_pairs (event_id, prompt, chosen, rejected, margin, model_version,"
        " labeler_version)"
        " VALUES (?, ?, ?, 'I do not know.', 3.0, 'm', 'l')",
        [f"ev{i}", f"What is {i} + 1?", f"The answer is {i + 1}."],
    )


def _heldout_ids(con) -> set[str]:  # type: ignore[no-untyped-def]
    """Events whose prompt is in the held-out slice (the buffer's keyed hash of the prompt)."""
    return {
        r[0]
        for r in con.execute(
            f"SELECT id FROM events e WHERE {heldout_condition('e.prompt_hash')}",
            heldout_params(con, HELDOUT),
        ).fetchall()
    }


def test_a_snapshot_takes_new_safe_confident_examples_outside_the_heldout_slice(
    tmp_path: Path, either_buffer: Buffer
) -> None:
    buffer = either_buffer
    con = buffer.cursor()
    for i in range(60):
        _event(
            con,
            i,
            outcome="quarantine" if i % 10 == 3 else ("redact" if i % 10 == 4 else "allow"),
            confidence=0.3 if i % 10 == 5 else 0.8,
        )
    heldout = _heldout_ids(con)
    assert 0 < len(heldout) < 20

    snap = freeze_snapshot(
        con, tmp_path / "ds", min_confidence=0.6, replay_share=0.25, heldout_percent=HELDOUT
    )
    assert snap is not None and snap.n_replay == 0  # nothing older to replay yet
    rows = pq.read_table(snap.path).to_pylist()
    ids = {r["example_id"] for r in rows}
    taken = {
        r[0]
        for r in con.execute(
            "SELECT e.event_id FROM training_examples e WHERE e.example_id IN (SELECT unnest(?))", [list(ids)]
        ).fetchall()
    }
    assert not taken & heldout, "a held-out event reached training"
    expected = {f"ev{i}" for i in range(60) if i % 10 not in (3, 5)} - heldout
    assert taken == expected  # quarantined and low-confidence examples stay out
    assert any("[REDACTED]" in r["prompt"] for r in rows) and not any(
        "4 + 1" in r["prompt"] for r in rows if r["prompt"].startswith("What is 4 ")
    )
    # DPO pairs only from events whose examples were all `allow` (pairs are not redacted).
    pair_events = {
        r[0]
        for r in con.execute(
            "SELECT p.event_id FROM dataset_pairs d JOIN preference_pairs p USING (pair_id)"
        ).fetchall()
    }
    assert pair_events and pair_events <= {f"ev{i}" for i in range(60) if i % 10 not in (3, 4, 5)}

    # Nothing new: no snapshot. New examples: a snapshot with a replay share of the older ones.
    assert freeze_snapshot(con, tmp_path / "ds", 0.6, 0.25, HELDOUT) is None
    for i in range(60, 90):
        _event(con, i)
    second = freeze_snapshot(con, tmp_path / "ds", 0.6, 0.25, HELDOUT)
    assert second is not None and second.dataset_id != snap.dataset_id
    assert second.n_replay == second.n_new // 3 and second.n_replay > 0
    replayed = {r["example_id"] for r in pq.read_table(second.path).to_pylist() if r["replay"]}
    assert replayed <= ids


def test_a_snapshot_mixes_in_the_safety_anchor_share_outside_the_lineage(
    tmp_path: Path, either_buffer: Buffer
) -> None:
    """training.safety_anchor_share of the rows are refusals from the policy's anchor file: marked in
    the Parquet file, counted on the data set's row and kept when a failed run is retried, never listed
    as buffer examples (they are not traffic)."""
    buffer = either_buffer
    con = buffer.cursor()
    for i in range(60):
        _event(con, i)
    anchors = safety_anchor_examples(None)
    snap = freeze_snapshot(con, tmp_path / "ds", 0.6, 0.0, HELDOUT, anchors=anchors, anchor_share=0.1)
    assert snap is not None and snap.n_anchor == rows_for_share(snap.n_new, 0.1) > 0
    rows = pq.read_table(snap.path).to_pylist()
    anchored = [r for r in rows if r["anchor"]]
    assert len(rows) == snap.n_examples == snap.n_new + snap.n_anchor
    assert len(anchored) == snap.n_anchor and all(r["example_id"] is None for r in anchored)
    assert {(r["prompt"], r["completion"]) for r in anchored} <= set(anchors)
    listed = con.execute("SELECT count(*) FROM dataset_examples WHERE dataset_id = ?", [snap.dataset_id])
    assert listed.fetchone() == (snap.n_new,)
    assert stored_snapshot(con, snap.dataset_id) == snap
    # The anchor set is disjoint from the safety probes that measure what a run did to refusals.
    assert not {p for p, _ in anchors} & set(probe_prompts("safety_harmful", None))


def test_lineage_lists_an_adapter_back_to_the_kafka_offsets_it_learned_from(
    tmp_path: Path, either_buffer: Buffer
) -> None:
    buffer = either_buffer
    con = buffer.cursor()
    for i in range(20):
        _event(con, i)
    snap = freeze_snapshot(con, tmp_path / "ds", 0.6, 0.0, HELDOUT)
    assert snap is not None
    con.execute(
        "INSERT INTO runs (run_id, dataset_id, kind, status, config)"
        " VALUES ('r1', ?, 'sft', 'succeeded', '{}')",
        [snap.dataset_id],
    )
    con.execute(
        "INSERT INTO adapters (name, version, run_id, status, path, manifest) VALUES"
        " ('a-v1', 1, 'r1', 'live', '/x', '{}')"
    )
    found = adapter_lineage(buffer, "a-v1")
    assert found is not None and found["adapter"]["run"]["dataset_id"] == snap.dataset_id
    offsets = {(k["partition"], o) for k in found["adapter"]["kafka_offsets"] for o in k["offsets"]}
    trained = {int(e[2:]) for e in {f"ev{i}" for i in range(20)} - _heldout_ids(con)}
    assert offsets == {(i % 2, i) for i in trained}
    assert adapter_lineage(buffer, "missing") is None


@pytest.mark.parametrize(
    ("max_steps", "max_epochs", "n_examples", "batch_size", "steps"),
    [
        (30, 2.0, 27, 8, 7),  # the first self-improvement run: 30 steps were ~9 epochs; now 2
        (30, 2.0, 1000, 8, 30),  # a large snapshot: max_steps binds
        (30, None, 27, 8, 30),  # the cap switched off
        (30, 0.1, 3, 8, 1),  # never below one step
    ],
)
def test_training_steps_are_capped_at_max_epochs_over_the_snapshot(
    max_steps: int, max_epochs: float | None, n_examples: int, batch_size: int, steps: int
) -> None:
    assert capped_steps(max_steps, max_epochs, n_examples, batch_size) == steps


def test_the_paired_test_counts_only_discordant_items() -> None:
    same = paired_compare([True, False, True], [True, False, True])
    assert same.p_value == 1.0 and same.candidate_score == same.live_score
    better = paired_compare([True] * 12 + [False] * 8, [False] * 10 + [True] * 2 + [False] * 8)
    assert better.candidate_only == 10 and better.live_only == 0
    assert better.p_value == pytest.approx(0.5**10)  # exact McNemar, one-sided
    worse = paired_compare([False] * 10, [True] * 10)
    assert worse.p_value == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        paired_compare([True], [True, False])


def test_reference_checkers_and_bad_reference_files(tmp_path: Path) -> None:
    assert ReferenceItem("q", "Paris", "contains").check("The capital is Paris.")
    assert not ReferenceItem("q", "Paris", "contains").check("It is Parisian food.")
    assert ReferenceItem("q", "7|seven", "contains").check("There are seven days.")
    assert ReferenceItem("q", "42", "number").check("6 times 7... The answer is 42.")
    assert not ReferenceItem("q", "42", "number").check("The answer is 41.")
    assert ReferenceItem("q", "no", "yes_no").check("No, a whale is a mammal.")
    bad = tmp_path / "golden.jsonl"
    bad.write_text(
        '{"prompt": "a", "reference": "b"}\nnot json\n{"prompt": "c", "reference": "d", "checker": "regex"}\n'
    )
    with pytest.raises(ConfigError) as err:
        load_reference_set(bad)
    messages = [str(e) for e in err.value.errors]
    assert len(messages) == 2 and ":2:" in messages[0] and "unknown checker 'regex'" in messages[1]


def test_the_scheduler_keeps_pauses_across_restarts_and_never_overlaps_a_job(
    tmp_path: Path, either_buffer: Buffer
) -> None:
    buffer = either_buffer
    release = threading.Event()
    calls: list[str] = []

    def slow() -> JobResult:
        calls.append("slow")
        release.wait(10)
        return JobResult("ok", "did slow work")

    def quick() -> JobResult:
        calls.append("quick")
        return JobResult("idle", "nothing to do")

    config = SchedulerConfig(
        labeling=JobSchedule(interval_s=3600),
        policies=JobSchedule(interval_s=3600),
        training=JobSchedule(cron="0 3 * * *"),
        evaluation=JobSchedule(interval_s=3600),
        promotion=JobSchedule(interval_s=3600),
        retention=JobSchedule(interval_s=3600, enabled=False),
    )
    bodies = {"training": slow, "policies": quick, "retention": quick}
    state = f"sqlite:///{tmp_path / 'scheduler.sqlite'}"
    scheduler = LoopScheduler(config, state, bodies, buffer, None)
    scheduler.start()
    try:
        status = {j.job: j for j in scheduler.status()}
        assert status["training"].trigger is not None and status["training"].trigger.startswith("cron")
        assert not status["retention"].scheduled
        scheduler.pause("training")
        assert scheduler.run_now("training").started
        deadline = time.monotonic() + 5
        while "slow" not in calls and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = scheduler.run_now("training")
        assert not refused.started and refused.reason is not None and "already running" in refused.reason
        assert scheduler.runners["training"].run("schedule").outcome == "skipped"
        release.set()
        with pytest.raises(KeyError, match="no job named"):
            scheduler.pause("nope")
    finally:
        scheduler.shutdown()
    time.sleep(0.5)
    assert calls.count("slow") == 1

    again = LoopScheduler(config, state, bodies, buffer, None)
    again.start()
    try:
        status = {j.job: j for j in again.status()}
        assert status["training"].paused and not status["policies"].paused
        last = status["training"].last
        assert last is not None and (last.outcome, last.trigger) == ("ok", "manual")
        again.resume("training")
        assert not {j.job: j for j in again.status()}["training"].paused
    finally:
        again.shutdown()
    outcomes = buffer.cursor().execute("SELECT outcome FROM job_runs WHERE job = 'training'").fetchall()
    assert sorted(o[0] for o in outcomes) == ["ok", "skipped"] or sorted(o[0] for o in outcomes) == ["ok"]
