"""The `evaluations` table's one owner: every suite's scores for a candidate against a baseline, and
the `summary` row the promotion policy decides on."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from evolvd.buffer import Buffer, rows_as_dicts, transaction
from evolvd.buffer.heldout import heldout_condition, heldout_params
from evolvd.policies.gates import CandidateEvaluation, ProbeScores

SUMMARY_SUITE = "summary"

SuiteScores = tuple[float | None, float | None, float | None]
"""(candidate score, baseline score, p-value) of one suite."""


class EvaluationStore:
    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer

    def record(
        self, result: CandidateEvaluation, scores: dict[str, SuiteScores], details: dict[str, dict[str, Any]]
    ) -> None:
        """Every suite's row and the summary, in one transaction: the promotion job sees a whole
        evaluation or none."""
        con = self._buffer.cursor()
        insert = (
            "INSERT INTO evaluations (adapter_name, baseline_name, suite, score, baseline_score, p_value,"
            " details) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        with transaction(con):
            for suite, (score, baseline, p_value) in scores.items():
                con.execute(
                    insert,
                    [
                        result.candidate,
                        result.live,
                        suite,
                        score,
                        baseline,
                        p_value,
                        json.dumps(details[suite]),
                    ],
                )
            con.execute(
                insert,
                [
                    result.candidate,
                    result.live,
                    SUMMARY_SUITE,
                    result.heldout_score,
                    result.live_heldout_score,
                    result.p_value,
                    json.dumps(asdict(result)),
                ],
            )

    def latest_summary(self, adapter: str) -> CandidateEvaluation | None:
        """The newest summary evaluation of an adapter (what the promotion job decides on)."""
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT details FROM evaluations WHERE adapter_name = ? AND suite = ?"
                " ORDER BY evaluation_id DESC LIMIT 1",
                [adapter, SUMMARY_SUITE],
            )
            .fetchone()
        )
        if row is None:
            return None
        raw = json.loads(row[0])
        raw["safety"] = ProbeScores(**raw["safety"])
        raw["live_safety"] = ProbeScores(**raw["live_safety"])
        return CandidateEvaluation(**raw)

    def recent_summaries(self, limit: int = 5) -> list[dict[str, Any]]:
        return rows_as_dicts(
            self._buffer.cursor().execute(
                "SELECT adapter_name, baseline_name, score, baseline_score, p_value, created_at"
                " FROM evaluations WHERE suite = ? ORDER BY evaluation_id DESC LIMIT ?",
                [SUMMARY_SUITE, limit],
            )
        )

    def of_adapter(self, adapter: str) -> list[dict[str, Any]]:
        return rows_as_dicts(
            self._buffer.cursor().execute(
                "SELECT suite, baseline_name, score, baseline_score, p_value, details, created_at"
                " FROM evaluations WHERE adapter_name = ? ORDER BY evaluation_id",
                [adapter],
            )
        )


@dataclass(frozen=True)
class HeldoutItem:
    event_id: str
    prompt: str
    label: str


def heldout_items(
    buffer: Buffer, heldout_percent: int, limit: int, min_confidence: float
) -> list[HeldoutItem]:
    """The newest labeled prompts of the held-out slice whose label has at least `min_confidence`
    (the training bar unless promotion.heldout_min_confidence raises it: a 1-in-5 vote is noise,
    and agreement with noise says nothing about a candidate). Each prompt counts once, however often
    it was sent: 60 copies of one prompt are one item of evidence, not 60. A prompt some snapshot
    trained on is never an item (a buffer older than the keyed slice may hold such prompts)."""
    con = buffer.cursor()
    rows = con.execute(
        "SELECT id, prompt, answer FROM ("  # noqa: S608
        "  SELECT e.id, e.prompt, l.answer, e.ingested_at,"
        "  row_number() OVER (PARTITION BY e.prompt_hash ORDER BY e.ingested_at DESC, e.id) AS newest"
        "  FROM events e JOIN labels l ON l.event_id = e.id"
        f" WHERE e.prompt IS NOT NULL AND l.answer IS NOT NULL AND {heldout_condition('e.prompt_hash')}"
        "  AND l.confidence >= ?"
        "  AND NOT EXISTS (SELECT 1 FROM dataset_examples d JOIN training_examples t"
        "    ON t.example_id = d.example_id JOIN events ev ON ev.id = t.event_id"
        "    WHERE ev.prompt_hash = e.prompt_hash)"
        ") AS items WHERE newest = 1 ORDER BY ingested_at DESC, id LIMIT ?",
        [*heldout_params(con, heldout_percent), min_confidence, limit],
    ).fetchall()
    return [HeldoutItem(str(r[0]), str(r[1]), str(r[2])) for r in rows]
