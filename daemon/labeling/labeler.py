"""The labeling job: take pending events from the buffer, label them with the live model, and write
every row of one event (samples, vote, critiques, refinement, pair, examples, the event's new state)
in one transaction, so a crash mid-batch loses nothing and labels nothing twice."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace

import numpy as np

from evolvd.buffer import Buffer, transaction
from evolvd.buffer.sampling import sampled_condition, sampled_params
from evolvd.buffer.sql import PostgresSql, Sql, affected_rows
from evolvd.connectors.vllm_client import VLLMError
from evolvd.judge import TOP_LOGPROBS, Judge
from evolvd.labeling.pipeline import LABELER_VERSION, ChatModel, LabelResult, label_prompt
from evolvd.metrics import LabelMetrics
from evolvd.policies.loader import PolicySet

logger = logging.getLogger("evolvd.labeler")


@dataclass(frozen=True)
class PendingEvent:
    event_id: str
    prompt: str


def mark_duplicates(con: Sql) -> int:
    """Pending events whose prompt was labeled already become `duplicate`: a prompt is labeled once,
    however often it is sent (a flood of one prompt would otherwise be labeled, and trained on, again
    and again). Returns how many were marked."""
    row = con.execute(
        "UPDATE events SET state = 'duplicate' WHERE state = 'pending' AND prompt_hash IN"
        " (SELECT prompt_hash FROM events WHERE state = 'labeled') RETURNING 1"
    ).fetchall()
    return len(row)


def mark_unsampled(con: Sql, share: float) -> int:
    """Pending events outside the labeled share (labeling.sample_share, evolvd.buffer.sampling) become
    `unsampled`: stored for drift windows and lineage, never labeled. Returns how many."""
    if share >= 1:
        return 0
    return affected_rows(
        con,
        "UPDATE events SET state = 'unsampled' WHERE state = 'pending'"  # noqa: S608
        f" AND NOT {sampled_condition('prompt_hash')}",
        sampled_params(con, share),
    )


def pending_events(con: Sql, limit: int) -> list[PendingEvent]:
    """The oldest pending events, one per prompt (its copies wait, and `mark_duplicates` takes them
    once it is labeled)."""
    rows = con.execute(
        "SELECT id, prompt, messages FROM ("
        " SELECT id, prompt, CAST(messages AS VARCHAR) AS messages, ingested_at, kafka_partition,"
        " kafka_offset, row_number() OVER (PARTITION BY prompt_hash ORDER BY ingested_at, kafka_partition,"
        " kafka_offset) AS copy FROM events WHERE state = 'pending') AS pending"
        " WHERE copy = 1 ORDER BY ingested_at, kafka_partition, kafka_offset LIMIT ?",
        [limit],
    ).fetchall()
    return [PendingEvent(str(r[0]), r[1] if r[1] is not None else _last_user_message(r[2])) for r in rows]


_CLAIM = """
UPDATE events SET claimed_by = ?, claimed_until = now() + make_interval(secs => ?)
WHERE id IN (
    SELECT id FROM events
    WHERE state = 'pending' AND (claimed_until IS NULL OR claimed_until < now())
    ORDER BY ingested_at, kafka_partition, kafka_offset
    LIMIT ?
    FOR UPDATE SKIP LOCKED)
RETURNING id, prompt, CAST(messages AS VARCHAR), ingested_at, kafka_partition, kafka_offset
"""


def claim_events(con: Sql, claimant: str, limit: int, lease_s: float) -> list[PendingEvent]:
    """The oldest pending events nobody holds, now held by `claimant` for `lease_s` seconds.

    On PostgreSQL, labelers sharing the buffer skip the rows another is claiming (SKIP LOCKED), and the
    events of a labeler that died are claimed again once its lease ran out; a result written after
    that is refused by write_result (the event is labeled once). A DuckDB file has one labeler: its
    pending events, one per prompt."""
    if not isinstance(con, PostgresSql):
        return pending_events(con, limit)
    rows = con.execute(_CLAIM, [claimant, lease_s, limit]).fetchall()
    ordered = sorted(rows, key=lambda r: (r[3], r[4], r[5]))  # RETURNING keeps no order: the oldest first
    return [PendingEvent(str(r[0]), r[1] if r[1] is not None else _last_user_message(r[2])) for r in ordered]


def _last_user_message(messages_json: str | None) -> str:
    """A chat event is labeled on its last user turn (what the model was asked to answer)."""
    messages = json.loads(messages_json or "[]")
    users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


_INSERT_SAMPLE = (
    "INSERT INTO samples (event_id, model_version, labeler_version, params, text, answer, answer_kind,"
    " vote_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING sample_id"
)
_INSERT_LABEL = (
    "INSERT INTO labels (event_id, answer, confidence, n_samples, votes, model_version, labeler_version,"
    " vote_method, greedy_answer, greedy_share) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_CRITIQUE = (
    "INSERT INTO critiques (event_id, sample_id, refinement_id, text, score, score_status, principles_hash,"
    " model_version, labeler_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING critique_id"
)
_INSERT_REFINEMENT = (
    "INSERT INTO refinements (event_id, source_sample_id, critique_id, text, answer, accepted, reason,"
    " model_version, labeler_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING refinement_id"
)
_INSERT_PAIR = (
    "INSERT INTO preference_pairs (event_id, prompt, chosen, rejected, chosen_score, rejected_score,"
    " margin, source, model_version, labeler_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EXAMPLE = (
    "INSERT INTO training_examples (event_id, format, prompt, completion, confidence, model_version,"
    " labeler_version) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def write_result(con: Sql, result: LabelResult) -> bool:
    """Every row of one labeled event and its state, in one transaction. False if already labeled.

    The state flips first: on PostgreSQL that update also locks the event's row, so of two labelers
    with a result for one event, the second waits, then finds it labeled and writes nothing."""
    with transaction(con):
        flipped = con.execute(
            "UPDATE events SET state = 'labeled' WHERE id = ? AND state = 'pending' RETURNING id",
            [result.event_id],
        ).fetchone()
        if flipped is None:
            return False
        _write_rows(con, result)
    return True


def _write_rows(con: Sql, r: LabelResult) -> None:
    lineage = [r.model, LABELER_VERSION]
    params = json.dumps(r.params)
    vote = r.vote
    keys = vote.keys or (None,) * len(r.samples)
    ids = [
        _returning(con, _INSERT_SAMPLE, [r.event_id, *lineage, params, s.text, s.answer, r.kind, key])
        for s, key in zip(r.samples, keys, strict=True)
    ]
    votes = {
        "counts": vote.counts,
        "winners": [ids[i] for i in vote.winners],
        "failures": vote.extraction_failures,
    }
    baseline = [vote.method, r.greedy_answer, r.greedy_share]
    con.execute(
        _INSERT_LABEL,
        [r.event_id, vote.answer, vote.confidence, len(ids), json.dumps(votes), *lineage, *baseline],
    )
    phash = str(r.params["principles_hash"])
    critique_ids = []
    for c in r.critiques:
        sample_id = ids[c.sample_index] if c.sample_index is not None else None
        row = [r.event_id, sample_id, None, c.text, c.score.value, c.score.status, phash, *lineage]
        critique_ids.append(_returning(con, _INSERT_CRITIQUE, row))
    refinement, rescore = r.refinement, r.refinement_critique
    if refinement is not None and rescore is not None:
        source = ids[r.critiques[0].sample_index or 0]
        row = [r.event_id, source, critique_ids[0], refinement.text, refinement.answer, refinement.accepted,
               refinement.reason, *lineage]  # fmt: skip
        refinement_id = _returning(con, _INSERT_REFINEMENT, row)
        rescore_row = [
            r.event_id,
            None,
            refinement_id,
            rescore.text,
            rescore.score.value,
            rescore.score.status,
        ]
        _returning(con, _INSERT_CRITIQUE, [*rescore_row, phash, *lineage])
    if r.pair is not None:
        p = r.pair
        scores = [p.chosen_score, p.rejected_score, p.margin, p.source]
        con.execute(_INSERT_PAIR, [r.event_id, r.prompt, p.chosen, p.rejected, *scores, *lineage])
    for fmt, completion in r.examples:
        con.execute(_INSERT_EXAMPLE, [r.event_id, fmt, r.prompt, completion, vote.confidence, *lineage])
    for judge_prompt, completion in r.judge_examples:
        row = [r.event_id, "critique", judge_prompt, completion, vote.confidence, *lineage]
        con.execute(_INSERT_EXAMPLE, row)


def _returning(con: Sql, sql: str, params: Sequence[object]) -> int:
    row = con.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def mark_skipped(con: Sql, event_id: str) -> None:
    con.execute("UPDATE events SET state = 'skipped' WHERE id = ? AND state = 'pending'", [event_id])


class LabelingStoppedError(Exception):
    """The daemon is stopping: the prompt's remaining requests are not sent, and it stays pending."""


class _StopAwareChat:
    """The live model, refusing new requests once the daemon stops. A prompt's stages are several
    requests; checking before each one bounds a graceful stop by one request, not a whole chain."""

    def __init__(self, chat: ChatModel, stopping: Callable[[], bool]) -> None:
        self._chat = chat
        self._stopping = stopping

    def _check(self) -> None:
        if self._stopping():
            raise LabelingStoppedError("daemon stopping")

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        self._check()
        return self._chat.chat(model, prompt, max_tokens, temperature, n, top_p)

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str:
        self._check()
        return self._chat.choose(model, messages, choices)

    def next_token_logprobs(
        self, model: str, messages: list[dict[str, str]], top_logprobs: int = TOP_LOGPROBS
    ) -> dict[str, float]:
        self._check()
        return self._chat.next_token_logprobs(model, messages, top_logprobs)


class Labeler:
    """Labels pending events in batches, `concurrency` prompts in flight so vLLM batches them."""

    def __init__(
        self,
        buffer: Buffer,
        policies: Callable[[], PolicySet],
        model: Callable[[], tuple[ChatModel, str] | None],
        embed: Callable[[Sequence[str]], np.ndarray],
        metrics: LabelMetrics | None,
        batch_size: int,
        concurrency: int,
        judge: Callable[[ChatModel, str], Judge],
        stopping: Callable[[], bool] = lambda: False,
        claimant: str = "evolvd",
        lease_s: float = 300.0,
    ) -> None:
        """`judge`: the judge for this round, given the live model and its name (the live model itself
        unless the config names another, evolvd.judge). `claimant` and `lease_s`: this labeler's name
        on the events it claims in a shared buffer, and how long a claim holds (claim_events)."""
        self._buffer = buffer
        self._policies = policies
        self._model = model
        self._embed = embed
        self._metrics = metrics
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._judge = judge
        self._stopping = stopping
        self._claimant = claimant
        self._lease_s = lease_s

    def run_once(self) -> int:
        """Label one batch; returns how many events were labeled (0: nothing pending or no model)."""
        served = self._model()
        if served is None:
            return 0
        live_chat, model = served
        chat = _StopAwareChat(live_chat, self._stopping)
        mark_unsampled(self._buffer.cursor(), self._buffer.sample_share)
        duplicates = mark_duplicates(self._buffer.cursor())
        if duplicates and self._metrics is not None:
            self._metrics.duplicates.inc(duplicates)
        events = claim_events(self._buffer.cursor(), self._claimant, self._batch_size, self._lease_s)
        if not events:
            return 0
        policies = self._policies()
        judge = self._judge(live_chat, model)
        judge = replace(judge, client=_StopAwareChat(judge.client, self._stopping))
        labeled = 0
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="evolvd-label") as pool:
            futures = {
                pool.submit(label_prompt, chat, model, e.event_id, e.prompt, policies.labeling,
                            policies.safety.principles, self._embed, judge): e
                for e in events
            }  # fmt: skip
            for future in as_completed(futures):
                event = futures[future]
                try:
                    result = future.result()
                except LabelingStoppedError:
                    continue  # stays pending: labeled after the restart
                except VLLMError as exc:
                    self._failed(event, exc)
                    continue
                if write_result(self._buffer.cursor(), result):
                    labeled += 1
                    self._count(result)
        return labeled

    def _failed(self, event: PendingEvent, exc: VLLMError) -> None:
        if self._metrics is not None:
            self._metrics.errors.inc()
        if 400 <= exc.status < 500:  # the model refuses this prompt (too long, ...): retrying cannot help
            logger.error("event %s skipped: %s", event.event_id, exc)
            mark_skipped(self._buffer.cursor(), event.event_id)
        else:
            logger.warning("labeling event %s failed, it stays pending: %s", event.event_id, exc)

    def _count(self, result: LabelResult) -> None:
        m = self._metrics
        if m is None:
            return
        m.labels.inc()
        m.confidence.observe(result.vote.confidence)
        m.samples.inc(len(result.samples))
        m.extraction_failures.labels(result.kind).inc(result.vote.extraction_failures)
        for critique in [
            *result.critiques,
            *([result.refinement_critique] if result.refinement_critique else []),
        ]:
            m.critique_scores.labels(critique.score.status).inc()
        if result.refinement is not None:
            m.refinements.labels("accepted" if result.refinement.accepted else "rejected").inc()
        if result.pair is not None:
            m.pairs.labels(result.pair.source).inc()
        m.examples.inc(len(result.examples) + len(result.judge_examples))
