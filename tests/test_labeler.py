"""The labeling pipeline with a scripted model (each stage's logic), and its rows in a real DuckDB
file and PostgreSQL database (one transaction per event, nothing labeled twice, claims, the labeled
share)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from evolvd.abc import IngestBatch, Record
from evolvd.buffer import Buffer, DuckDBBuffer
from evolvd.buffer.postgres_buffer import PostgresBuffer
from evolvd.contract import decode_into, encode_message
from evolvd.judge import Judge
from evolvd.judge_prompts import parse_score
from evolvd.labeling.labeler import Labeler, claim_events, mark_unsampled, pending_events, write_result
from evolvd.labeling.pipeline import label_prompt
from evolvd.metrics import LabelMetrics, new_registry
from evolvd.policies.loader import load_candidate, load_policies

POLICIES = load_policies(None)
PRINCIPLES = POLICIES.safety.principles


class ScriptedModel:
    """Answers by the kind of request: samples, critiques (scores by what is judged), refinements."""

    def __init__(
        self, samples: list[str], scores: dict[str, str], refinement: str = "", constrained: str = ""
    ) -> None:
        self.samples, self.scores, self.refinement, self.constrained = (
            samples,
            scores,
            refinement,
            constrained,
        )
        self.calls: list[tuple[str, int]] = []
        self.logprobs: dict[str, float] = {}
        self.greedy = samples[0] if samples else ""

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str:
        assert choices == [str(n) for n in range(1, 11)] and messages[-1]["role"] == "user"
        self.calls.append(("choose", 1))
        return self.constrained

    def next_token_logprobs(
        self, model: str, messages: list[dict[str, str]], top_logprobs: int = 20
    ) -> dict[str, float]:
        return self.logprobs  # by default no score tokens: the judge reads the critique's score line

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        self.calls.append((prompt[:40], n))
        if prompt.startswith("Review the answer"):
            judged = prompt.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]
            return [f"A critique.\n{self.scores.get(judged, '')}"]
        if prompt.startswith("Question:"):
            return [self.refinement]
        if n == 1 and temperature == 0.0:  # the greedy baseline (labeling.greedy_baseline)
            return [self.greedy]
        assert n == len(self.samples)  # the policy's sample count is what is asked for
        return self.samples


def _no_embed(texts: Sequence[str]) -> np.ndarray:
    raise AssertionError("extractable answers must not need embeddings")


SAMPLES = [
    "7 + 5 = 12. The answer is 12.",
    "Seven plus five is twelve. The answer is 12.",
    "7 + 5 = 13. The answer is 13.",
    "I think 7 and 5 make 12. The answer is 12.",
    "Not sure.",
]


def test_vote_critique_refine_pair_and_examples() -> None:
    refined = "7 + 5: 7 + 3 = 10, 10 + 2 = 12. The answer is 12."
    model = ScriptedModel(
        SAMPLES, {SAMPLES[0]: "Score: 6", SAMPLES[2]: "Score: 2/10", refined: "Score: 9"}, refined
    )
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", POLICIES.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert result.kind == "number"
    assert (result.vote.answer, result.vote.confidence, result.vote.winners) == ("12", 0.6, (0, 1, 3))
    assert result.vote.extraction_failures == 1
    assert [(c.sample_index, c.score.value) for c in result.critiques] == [(0, 6.0), (2, 2.0)]
    assert result.refinement is not None and result.refinement.accepted and result.refinement.answer == "12"
    assert result.pair is not None and (result.pair.chosen, result.pair.rejected) == (refined, SAMPLES[2])
    assert result.pair.margin == 7.0
    assert result.examples == [
        ("cot", SAMPLES[0]),
        ("cot", SAMPLES[1]),
        ("direct", "The answer is 12."),
        ("refined", refined),
    ]
    assert result.params["principles_hash"] and result.params["temperature"] == POLICIES.labeling.temperature


def test_critiques_the_vote_bears_out_become_examples_of_judging() -> None:
    """Meta-skill learning (labeling.critique_examples): the winner's critique scored above a
    minority answer's are both kept, as the judge's prompt and the critique ending in its score;
    critiques that rank against the vote, or tie, are not."""
    policy = POLICIES.labeling.model_copy(update={"critique_examples": True, "refine": False})

    def label(scores: dict[str, str]) -> list[tuple[str, str]]:
        model = ScriptedModel(SAMPLES, scores)
        result = label_prompt(
            model, "base", "e1", "What is 7 + 5?", policy, PRINCIPLES, _no_embed, Judge(model, "base")
        )
        return result.judge_examples

    agreeing = label({SAMPLES[0]: "Score: 8", SAMPLES[2]: "Score: 3"})
    assert [completion for _, completion in agreeing] == ["A critique.\nScore: 8", "A critique.\nScore: 3"]
    assert [prompt.split("<answer>\n")[1].split("\n</answer>")[0] for prompt, _ in agreeing] == [
        SAMPLES[0],
        SAMPLES[2],
    ]
    assert all(
        prompt.startswith("Review the answer") and "What is 7 + 5?" in prompt for prompt, _ in agreeing
    )
    assert label({SAMPLES[0]: "Score: 3", SAMPLES[2]: "Score: 8"}) == []  # ranks the minority higher
    assert len(label({SAMPLES[0]: "Score: 8", SAMPLES[2]: "Score: 7"})) == 2  # no margin needed
    assert label({SAMPLES[0]: "Score: 7", SAMPLES[2]: "Score: 7"}) == []  # a tie ranks nothing
    off = ScriptedModel(SAMPLES, {SAMPLES[0]: "Score: 8", SAMPLES[2]: "Score: 3"})
    result = label_prompt(
        off, "base", "e1", "What is 7 + 5?", POLICIES.labeling, PRINCIPLES, _no_embed, Judge(off, "base")
    )
    assert result.judge_examples == []  # the shipped policy keeps none


def test_a_refinement_that_leaves_the_majority_is_rejected_even_when_it_scores_higher() -> None:
    wrong = "On reflection the answer is 11."
    model = ScriptedModel(
        SAMPLES, {SAMPLES[0]: "Score: 6", SAMPLES[2]: "Score: 5", wrong: "Score: 10"}, wrong
    )
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", POLICIES.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert result.refinement is not None and not result.refinement.accepted
    assert "disagrees with the majority '12'" in result.refinement.reason
    assert result.pair is None  # 6 - 5 is below the 2.0 margin
    assert ("refined", wrong) not in result.examples


def test_a_malformed_critique_score_is_recorded_and_stops_refinement() -> None:
    model = ScriptedModel(SAMPLES, {SAMPLES[0]: "Score: 11", SAMPLES[2]: "Score: 3"})
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", POLICIES.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert result.critiques[0].score.status == "malformed" and result.critiques[0].score.value is None
    assert result.refinement is None and result.pair is None


def test_a_missing_score_is_asked_again_with_constrained_decoding_and_marked_so() -> None:
    refined = "Carefully: 7 + 5 = 12. The answer is 12."
    model = ScriptedModel(SAMPLES, {SAMPLES[2]: "Score: 1", refined: "Score: 9"}, refined, constrained="6")
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", POLICIES.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert (result.critiques[0].score.value, result.critiques[0].score.status) == (6.0, "constrained")
    assert result.critiques[1].score.status == "ok"
    assert result.refinement is not None and result.refinement.accepted
    assert result.pair is not None and result.pair.margin == 8.0
    off = load_candidate(None, {"labeling.yaml": "constrained_score: false\n"}, False, "edit").labeling
    model = ScriptedModel(SAMPLES, {SAMPLES[2]: "Score: 1"}, refined, constrained="6")
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", off, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert result.critiques[0].score.status == "missing" and ("choose", 1) not in model.calls


def test_without_critique_only_the_vote_and_examples_are_made() -> None:
    policies = load_candidate(None, {"labeling.yaml": "critique: false\nrefine: false\n"}, False, "edit")
    model = ScriptedModel(SAMPLES, {})
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", policies.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert result.critiques == [] and len(model.calls) == 2  # the samples and the greedy baseline
    assert [f for f, _ in result.examples] == ["cot", "cot", "direct"]


VOTE_PAIRS = "critique: false\nrefine: false\nvote_pairs: true\n"


def test_a_vote_pair_sets_the_winning_path_against_the_least_voted_other_answer() -> None:
    policies = load_candidate(None, {"labeling.yaml": VOTE_PAIRS}, False, "edit")
    samples = [
        "7 + 5 = 12. The answer is 12.",
        "7 + 5 = 13. The answer is 13.",
        "Seven plus five is twelve. The answer is 12.",
        "7 + 5 = 11. The answer is 11.",
        "7 + 5 = 13, I think. The answer is 13.",
        "Twelve. The answer is 12.",
        "It is 12. The answer is 12.",
    ]
    policy = policies.labeling.model_copy(update={"samples": len(samples)})
    result = label_prompt(
        ScriptedModel(samples, {}),
        "base",
        "e1",
        "What is 7 + 5?",
        policy,
        PRINCIPLES,
        _no_embed,
        Judge(ScriptedModel([], {}), "base"),
    )
    assert result.vote.counts == {"12": 4, "13": 2, "11": 1}
    assert result.pair is not None and result.pair.source == "vote"
    # 11 has one vote against 12's four: the least-voted wrong answer is the clearest rejection.
    assert (result.pair.chosen, result.pair.rejected) == (samples[0], samples[3])
    assert (result.pair.chosen_score, result.pair.rejected_score, result.pair.margin) == (4, 1, 3)
    assert result.critiques == []  # the vote is the preference: no judge was asked


def test_no_vote_pair_from_a_close_vote_or_a_unanimous_one() -> None:
    policies = load_candidate(None, {"labeling.yaml": VOTE_PAIRS}, False, "edit")
    close = ["The answer is 12.", "The answer is 13.", "The answer is 12.", "The answer is 13.", "hmm"]
    result = label_prompt(
        ScriptedModel(close, {}),
        "base",
        "e1",
        "What is 7 + 5?",
        policies.labeling,
        PRINCIPLES,
        _no_embed,
        Judge(ScriptedModel([], {}), "base"),
    )
    assert result.vote.answer == "12" and result.pair is None  # 2 against 2: below the margin of 2
    unanimous = ["The answer is 12."] * 4 + ["hmm"]
    result = label_prompt(
        ScriptedModel(unanimous, {}),
        "base",
        "e1",
        "What is 7 + 5?",
        policies.labeling,
        PRINCIPLES,
        _no_embed,
        Judge(ScriptedModel([], {}), "base"),
    )
    assert result.pair is None  # an unreadable answer is no evidence of a wrong one


def test_with_vote_pairs_and_critique_the_minority_is_not_judged() -> None:
    policies = load_candidate(None, {"labeling.yaml": "vote_pairs: true\n"}, False, "edit")
    refined = "7 + 5: 7 + 3 = 10, 10 + 2 = 12. The answer is 12."
    model = ScriptedModel(SAMPLES, {SAMPLES[0]: "Score: 6", refined: "Score: 9"}, refined)
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", policies.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert result.pair is not None and result.pair.source == "vote"
    assert (result.pair.chosen, result.pair.rejected, result.pair.margin) == (SAMPLES[0], SAMPLES[2], 2)
    assert [c.sample_index for c in result.critiques] == [0]  # the winner only: its refinement needs it
    assert result.refinement is not None and result.refinement.accepted


def test_without_chain_of_thought_the_prompt_is_sampled_as_sent() -> None:
    edit = "critique: false\nrefine: false\nchain_of_thought: false\n"
    policies = load_candidate(None, {"labeling.yaml": edit}, False, "edit")
    model = ScriptedModel(SAMPLES, {})
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", policies.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    # No reasoning instruction, in the samples or the greedy baseline.
    assert model.calls == [("What is 7 + 5?", POLICIES.labeling.samples), ("What is 7 + 5?", 1)]
    assert result.params["chain_of_thought"] is False and result.vote.answer == "12"
    assert [f for f, _ in result.examples] == ["sampled", "sampled", "direct"]


def test_no_readable_answer_gives_a_zero_confidence_label_and_nothing_to_train_on() -> None:
    model = ScriptedModel(["hmm"] * 5, {})
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", POLICIES.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert (result.vote.answer, result.vote.confidence, result.examples) == (None, 0.0, [])


@pytest.mark.parametrize(
    ("critique", "value", "status"),
    [
        ("Accurate and concise.\nScore: 8", 8.0, "ok"),
        ("**Score:** 7/10", 7.0, "ok"),
        ("Score = 9.5", 9.5, "ok"),
        ("Score: 8\nScore: 8", 8.0, "ok"),
        ("The answer says 'Score: 10'.\nScore: 4", 4.0, "ok"),  # a quoted score is not a score line
        ("Score: 10\nActually it is wrong.\nScore: 4", None, "malformed"),  # an echoed injection: ambiguous
        ("Score: 12", None, "malformed"),
        ("Score: 0", None, "malformed"),
        ("I would score it highly.", None, "malformed"),
        ("Good answer, 8 out of 10", None, "missing"),
        ("", None, "missing"),
    ],
)
def test_scores_are_parsed_robustly_never_guessed(critique: str, value: float | None, status: str) -> None:
    score = parse_score(critique)
    assert (score.value, score.status) == (value, status)


def with_two_events(buf: Buffer) -> None:
    for i, prompt in enumerate(["What is 7 + 5?", None]):
        buf.cursor().execute(
            "INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, messages, prompt_hash)"
            " VALUES (?, 't', 0, ?, ?, ?, ?)",
            [f"e{i}", i, prompt, None if prompt else '[{"role": "user", "content": "Is 9 odd?"}]', f"h{i}"],
        )


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[DuckDBBuffer]:
    buf = DuckDBBuffer(tmp_path / "buffer.duckdb")
    with_two_events(buf)
    yield buf
    buf.close()


@pytest.fixture
def two_events(either_buffer: Buffer) -> Buffer:
    """The labeler's writes on each backend (conftest.either_buffer)."""
    with_two_events(either_buffer)
    return either_buffer


def test_one_transaction_per_event_and_nothing_is_labeled_twice(
    two_events: Buffer,
) -> None:
    buffer = two_events
    events = pending_events(buffer.cursor(), 10)
    assert [(e.event_id, e.prompt) for e in events] == [("e0", "What is 7 + 5?"), ("e1", "Is 9 odd?")]
    refined = "7 + 5 = 12 for sure. The answer is 12."
    model = ScriptedModel(
        SAMPLES, {SAMPLES[0]: "Score: 6", SAMPLES[2]: "Score: 2", refined: "Score: 8"}, refined
    )
    policy = POLICIES.labeling.model_copy(update={"critique_examples": True})
    result = label_prompt(
        model, "base", "e0", events[0].prompt, policy, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert write_result(buffer.cursor(), result) is True
    assert write_result(buffer.cursor(), result) is False  # already labeled: nothing written twice
    counts = buffer.table_counts()
    expected = {"samples": 5, "labels": 1, "critiques": 3, "refinements": 1, "preference_pairs": 1}
    assert {t: counts[t] for t in expected} == expected and counts["training_examples"] == 4 + 2
    con = buffer.cursor()
    judging = con.execute(
        "SELECT prompt, completion FROM training_examples WHERE format = 'critique' ORDER BY example_id"
    ).fetchall()
    assert [c for _, c in judging] == ["A critique.\nScore: 6", "A critique.\nScore: 2"]
    assert all(p.startswith("Review the answer") for p, _ in judging)
    assert con.execute("SELECT state FROM events ORDER BY id").fetchall() == [("labeled",), ("pending",)]
    winners = con.execute("SELECT votes->'winners' FROM labels").fetchone()
    sample_ids = [r[0] for r in con.execute("SELECT sample_id FROM samples ORDER BY sample_id").fetchall()]
    assert winners is not None and [int(x) for x in __import__("json").loads(winners[0])] == [
        sample_ids[i] for i in (0, 1, 3)
    ]
    rescore = con.execute(
        "SELECT refinement_id IS NOT NULL, score FROM critiques WHERE sample_id IS NULL"
    ).fetchall()
    assert rescore == [(True, 8.0)]
    assert [e.event_id for e in pending_events(con, 10)] == ["e1"]
    assert con.execute("SELECT source FROM preference_pairs").fetchall() == [("critique",)]


def test_vote_pairs_are_stored_with_their_source_and_counted(buffer: DuckDBBuffer) -> None:
    policies = load_candidate(None, {"labeling.yaml": VOTE_PAIRS}, False, "edit")
    registry = new_registry()
    labeler = Labeler(buffer, lambda: policies, lambda: (ScriptedModel(SAMPLES, {}), "base"), _no_embed,
                      LabelMetrics.create(registry), batch_size=10, concurrency=1, judge=Judge)  # fmt: skip
    assert labeler.run_once() == 2
    rows = (
        buffer.cursor()
        .execute(
            "SELECT event_id, chosen, rejected, chosen_score, rejected_score, margin, source"
            " FROM preference_pairs"
        )
        .fetchall()
    )
    assert rows == [("e0", SAMPLES[0], SAMPLES[2], 3.0, 1.0, 2.0, "vote")]  # "Is 9 odd?" got no vote
    assert registry.get_sample_value("evolvd_preference_pairs_total", {"source": "vote"}) == 1
    assert registry.get_sample_value("evolvd_preference_pairs_total", {"source": "critique"}) == 0


def test_a_failed_write_leaves_no_rows_and_the_event_pending(
    two_events: Buffer,
) -> None:
    buffer = two_events
    model = ScriptedModel(SAMPLES, {SAMPLES[0]: "Score: 6", SAMPLES[2]: "Score: 2"})
    result = label_prompt(
        model, "base", "e0", "What is 7 + 5?", POLICIES.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    result.examples.append(("cot", None))  # type: ignore[arg-type]  # violates NOT NULL at the last insert
    with pytest.raises(Exception, match=r"(?i)not.null"):
        write_result(buffer.cursor(), result)
    counts = buffer.table_counts()
    assert counts["samples"] == counts["labels"] == counts["training_examples"] == 0
    assert [e.event_id for e in pending_events(buffer.cursor(), 10)] == ["e0", "e1"]


def test_a_stop_mid_batch_sends_no_further_request_and_leaves_the_rest_pending(buffer: DuckDBBuffer) -> None:
    stop = threading.Event()

    class StopsAfterSampling(ScriptedModel):
        def chat(self, *args: object, **kwargs: object) -> list[str]:
            texts = super().chat(*args, **kwargs)  # type: ignore[arg-type]
            if len(self.calls) == 1:
                stop.set()  # the daemon is told to stop while the first request is in flight
            return texts

    model = StopsAfterSampling(SAMPLES, {SAMPLES[0]: "Score: 6", SAMPLES[2]: "Score: 2"})
    labeler = Labeler(buffer, lambda: POLICIES, lambda: (model, "base"), _no_embed, None,
                      batch_size=10, concurrency=1, judge=Judge, stopping=stop.is_set)  # fmt: skip
    assert labeler.run_once() == 0
    assert len(model.calls) == 1  # the sampling request; no critique, and the second prompt never began
    assert buffer.table_counts()["samples"] == 0  # an interrupted prompt writes nothing
    assert [e.event_id for e in pending_events(buffer.cursor(), 10)] == ["e0", "e1"]
    stop.clear()
    assert labeler.run_once() == 2  # after the restart both are labeled


def test_the_greedy_baseline_prices_the_label_against_the_answer_the_model_gives() -> None:
    """3 of 5 samples say 12 (the label, confidence 0.6); the greedy answer says 13, which 1 sample
    shares: the label is estimated to be right 0.6 - 0.2 = 0.4 more often than the greedy answer."""
    policies = load_candidate(None, {"labeling.yaml": "critique: false\nrefine: false\n"}, False, "edit")
    model = ScriptedModel(SAMPLES, {})
    model.greedy = "7 + 5 = 13. The answer is 13."
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", policies.labeling, PRINCIPLES, _no_embed, Judge(model, "base")
    )
    assert (result.vote.answer, result.vote.confidence) == ("12", 0.6)
    assert (result.greedy_answer, result.greedy_share) == ("13", 0.2)
    assert result.vote.keys == ("12", "12", "13", "12", None) and result.vote.method == "answer"
    off = load_candidate(None, {"labeling.yaml": "critique: false\nrefine: false\ngreedy_baseline: false\n"},
                         False, "edit")  # fmt: skip
    result = label_prompt(
        model, "base", "e1", "What is 7 + 5?", off.labeling, PRINCIPLES, _no_embed, Judge(model, "b")
    )
    assert (result.greedy_answer, result.greedy_share) == (None, None)


def test_answers_that_only_restate_the_question_are_no_label() -> None:
    """They used to fall back to the vote by meaning, which merged the restatements into one
    cluster and labeled "The chemical symbol of helium is helium." with confidence 1.0."""
    restated = ["The chemical symbol of helium is helium."] * 4 + ["The chemical symbol of helium is He."]
    policies = load_candidate(None, {"labeling.yaml": "critique: false\nrefine: false\n"}, False, "edit")
    model = ScriptedModel(restated, {})
    result = label_prompt(model, "base", "e1", "What is the chemical symbol of helium?", policies.labeling,
                          PRINCIPLES, _no_embed, Judge(model, "base"))  # fmt: skip
    assert (result.vote.answer, result.vote.confidence, result.vote.method) == ("he", 0.2, "answer")


def test_four_labelers_sharing_a_postgres_buffer_label_each_event_once(postgres_url: str) -> None:
    """Four labelers (threads, each with its own connection) claim from one PostgreSQL buffer; a fifth
    claimed a batch and died: its events are claimed again once its lease ran out, and the result it
    would write late is refused."""
    buffer = PostgresBuffer(postgres_url)
    n = 120
    try:
        batch = IngestBatch()
        for i in range(n):  # distinct prompts: copies of one prompt would be labeled once, as duplicates
            decode_into(Record("t", 0, i, encode_message(f"ev-{i:03d}", f"What is {i} + 5?")), 4096, batch)
        batch.next_offsets[("t", 0)] = n
        buffer.write_ingest_batch(batch.seal())
        dead = claim_events(buffer.cursor(), "dead", 10, lease_s=1.0)
        assert len(dead) == 10
        model = ScriptedModel(SAMPLES, {})
        first = dead[0]
        late = label_prompt(model, "base", first.event_id, first.prompt, POLICIES.labeling, PRINCIPLES,
                            _no_embed, Judge(model, "base"))  # fmt: skip
        labelers = [
            Labeler(
                buffer,
                lambda: POLICIES,
                lambda: (ScriptedModel(SAMPLES, {}), "base"),
                _no_embed,
                None,
                batch_size=8,
                concurrency=2,
                judge=Judge,
                claimant=f"labeler-{i}",
                lease_s=60,
            )
            for i in range(4)
        ]

        def pending() -> int:
            return buffer.events_by_state().get("pending", 0)

        def work(labeler: Labeler) -> None:
            deadline = time.monotonic() + 60
            while pending() and time.monotonic() < deadline:
                if labeler.run_once() == 0:
                    time.sleep(0.1)  # nothing claimable now: the dead labeler's lease still holds

        threads = [threading.Thread(target=work, args=(labeler,)) for labeler in labelers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert buffer.events_by_state() == {"labeled": n}
        counts = buffer.table_counts()
        assert counts["labels"] == n and counts["samples"] == n * len(SAMPLES)  # each event labeled once
        con = buffer.cursor()
        claimants = dict(
            con.execute("SELECT claimed_by, count(*) FROM events GROUP BY claimed_by").fetchall()
        )
        assert "dead" not in claimants and len(claimants) >= 2, claimants  # shared, and taken over
        assert write_result(con, late) is False  # the dead labeler's late result: already labeled
    finally:
        buffer.close()


def test_a_sample_share_labels_a_keyed_share_of_prompts_and_the_backlog_counts_only_it(
    either_buffer: Buffer,
) -> None:
    """labeling.sample_share 0.25: a quarter of the distinct prompts (by a keyed hash, every copy of a
    prompt on the same side) stay pending, the rest become `unsampled`; the ingest backlog counted only
    the share before the labeler marked them."""
    con = either_buffer.cursor()
    for i in range(400):
        prompt = f"prompt {i % 200}"  # 200 prompts, each sent twice
        con.execute(
            "INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, prompt_hash)"
            " VALUES (?, 't', 0, ?, ?, ?)",
            [f"s{i}", i, prompt, hashlib.sha256(prompt.encode()).hexdigest()],
        )
    assert either_buffer.backlog() == 200
    either_buffer.sample_share = 0.25
    share = either_buffer.backlog()
    assert 25 <= share <= 80  # 50 expected: a binomial draw of 200 prompts

    assert mark_unsampled(con, 0.25) == 2 * (200 - share)
    assert mark_unsampled(con, 0.25) == 0  # once
    states = con.execute("SELECT prompt, min(state), max(state) FROM events GROUP BY prompt").fetchall()
    assert all(low == high for _, low, high in states), "copies of a prompt on both sides"
    assert sum(1 for _, state, _ in states if state == "pending") == share == either_buffer.backlog()
    claimed = {e.prompt for e in claim_events(con, "me", 1_000, 60)}
    assert claimed == {p for p, state, _ in states if state == "pending"}
