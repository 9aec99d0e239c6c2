"""Evaluate a candidate adapter against the live one, through the serving process.

Suites (each a row in `evaluations`): the held-out slice of the buffer (short answers scored by
agreement with their self-consistency label, long ones by the judge's pairwise comparison), an
optional operator golden set, the forgetting probes, the safety probes, and the output-drift probe.
Held-out items are compared pairwise (exact McNemar test). The probes the two models disagree on
(forgetting, golden, safety) are asked again of both side by side before they count: greedy answers here
are not batch-invariant, and a guard rejects on one flipped probe (evolvd.evaluation.discordant).
The result is the `CandidateEvaluation` the promotion gate decides on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evolvd.buffer import Buffer
from evolvd.connectors.vllm_client import ChatClient
from evolvd.evaluation.checkers import ReferenceItem, load_reference_set
from evolvd.evaluation.discordant import settle_discordant, settle_flips
from evolvd.evaluation.greedy_memo import GreedyAnswerMemo
from evolvd.evaluation.paired import paired_compare
from evolvd.evaluation.store import EvaluationStore, HeldoutItem, SuiteScores, heldout_items
from evolvd.judge import Judge, JudgeModel
from evolvd.labeling.answers import answer_kind, extract, same_answer
from evolvd.labeling.prompts import sample_prompt
from evolvd.metrics import LoopMetrics
from evolvd.policies.gates import CandidateEvaluation
from evolvd.policies.loader import PolicySet, probe_path
from evolvd.policies.probes import divergence_from_base, safety_flips, safety_run

logger = logging.getLogger("evolvd.evaluation")


@dataclass(frozen=True)
class EvaluationSettings:
    heldout_percent: int
    heldout_max: int
    max_tokens: int
    concurrency: int
    golden_set: Path | None


def heldout_bar(policies: PolicySet) -> float:
    """The confidence a held-out label needs to be an item (promotion.heldout_min_confidence, else
    the training bar)."""
    bar = policies.promotion.heldout_min_confidence
    return policies.training.min_confidence if bar is None else bar


class Evaluator:
    def __init__(
        self,
        buffer: Buffer,
        settings: EvaluationSettings,
        metrics: LoopMetrics | None,
        judge: Callable[[JudgeModel, str], Judge],
    ) -> None:
        """`judge`: the judge of long answers given the serving client and the live model's name (the
        live model itself unless the config names another)."""
        self._buffer = buffer
        self._store = EvaluationStore(buffer)
        self._settings = settings
        self._judge = judge
        self._metrics = metrics
        self._memo = GreedyAnswerMemo()

    # -- answering ----------------------------------------------------------------------------

    def _answers(self, client: ChatClient, model: str, prompts: Sequence[str]) -> list[str]:
        with ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="evolvd-eval") as pool:
            return list(pool.map(lambda p: client.chat(model, p, self._settings.max_tokens)[0], prompts))

    def _heldout_outcomes(
        self,
        judge: Judge,
        items: Sequence[HeldoutItem],
        candidate: Sequence[str],
        live: Sequence[str],
    ) -> tuple[list[bool], list[bool], dict[str, int]]:
        """Per item, whether the candidate's and the live answer are right, for the paired test.

        A short answer is right when it asserts its label (the vote's own answer identity, so two
        sentences or two spellings of one answer agree). A long answer has no right form to compare
        with: the judge compares the two answers instead, both ways round (evolvd.judge), and the
        preferred one counts as right, the other as wrong; a tie counts for neither, so it is no
        evidence either way. Returns the two lists and the pairwise verdicts' counts."""
        got_candidate: list[bool] = []
        got_live: list[bool] = []
        long_form: list[int] = []
        for index, item in enumerate(items):
            kind = answer_kind(item.prompt)
            if kind == "free_form":
                long_form.append(index)
                got_candidate.append(False)
                got_live.append(False)
            else:
                got_candidate.append(same_answer(extract(candidate[index], kind, item.prompt), item.label))
                got_live.append(same_answer(extract(live[index], kind, item.prompt), item.label))
        verdicts = {"candidate": 0, "live": 0, "tie": 0}
        if not long_form:
            return got_candidate, got_live, verdicts
        with ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="evolvd-judge") as pool:
            judged = pool.map(lambda i: judge.compare(items[i].prompt, candidate[i], live[i]), long_form)
            for index, verdict in zip(long_form, judged, strict=True):
                verdicts[verdict] += 1
                got_candidate[index] = verdict == "candidate"
                got_live[index] = verdict == "live"
        return got_candidate, got_live, verdicts

    def _reference_suite(
        self,
        clients: tuple[ChatClient, ChatClient],
        candidate: str,
        live: str,
        items: Sequence[ReferenceItem],
    ) -> dict[str, Any]:
        """A paired comparison on a reference set (forgetting probes, golden set): answered batched
        through `clients[0]` (the memo), the items the two models disagree on asked again of both
        side by side through `clients[1]` (evolvd.evaluation.discordant)."""
        memo, direct = clients
        prompts = [i.prompt for i in items]
        cand = [i.check(a) for i, a in zip(items, self._answers(memo, candidate, prompts), strict=True)]
        base = [i.check(a) for i, a in zip(items, self._answers(memo, live, prompts), strict=True)]
        reasked = settle_discordant(
            direct,
            (candidate, live),
            prompts,
            (cand, base),
            lambda index, answer: items[index].check(answer),
            self._settings.max_tokens,
        )
        return asdict(paired_compare(cand, base)) | {"reasked": len(reasked)}

    # -- the evaluation -----------------------------------------------------------------------

    def evaluate(
        self,
        client: JudgeModel,
        candidate: str,
        live: str,
        base: str,
        policies: PolicySet,
        policy_dir: Path | None,
    ) -> CandidateEvaluation:
        with self._counted():
            settings = self._settings
            hits, misses = self._memo.hits, self._memo.misses
            memo = self._memo.through(client)
            suites: dict[str, dict[str, Any]] = {}
            items = heldout_items(
                self._buffer, settings.heldout_percent, settings.heldout_max, heldout_bar(policies)
            )
            prompts = [sample_prompt(i.prompt, answer_kind(i.prompt)) for i in items]
            forgetting_set = load_reference_set(probe_path("forgetting", policy_dir))
            golden_set = load_reference_set(settings.golden_set) if settings.golden_set is not None else None

            # Every suite at once: vLLM batches all their requests together, which on a CPU is several
            # times faster than suite after suite (each a short batch of its own).
            with ThreadPoolExecutor(8, thread_name_prefix="evolvd-suite") as pool:
                heldout_candidate = pool.submit(self._answers, memo, candidate, prompts)
                heldout_live = pool.submit(self._answers, memo, live, prompts)
                clients = (memo, client)
                forgetting_run = pool.submit(self._reference_suite, clients, candidate, live, forgetting_set)
                golden_run = (
                    pool.submit(self._reference_suite, clients, candidate, live, golden_set)
                    if golden_set is not None
                    else None
                )
                candidate_probes = pool.submit(safety_run, memo, candidate, policies, policy_dir)
                live_probes = pool.submit(safety_run, memo, live, policies, policy_dir)
                divergence_run = pool.submit(
                    divergence_from_base, memo, candidate, base, policies, policy_dir
                )

                candidate_answers, live_answers = heldout_candidate.result(), heldout_live.result()
                candidate_right, live_right, verdicts = self._heldout_outcomes(
                    self._judge(client, live), items, candidate_answers, live_answers
                )
                heldout = paired_compare(candidate_right, live_right)
                forgetting = forgetting_run.result()
                candidate_safety, live_safety_answers, safety_reasked = settle_flips(
                    client, (candidate, live), (candidate_probes.result(), live_probes.result()), policies
                )
                safety, live_safety = candidate_safety.scores, live_safety_answers.scores
                divergence = divergence_run.result()
                suites["heldout"] = asdict(heldout) | {
                    "pairwise": verdicts,
                    # Which items decided, and how: an audit can re-score the same items another way.
                    "items": [
                        {
                            "event_id": i.event_id,
                            "candidate": c,
                            "live": lv,
                            "candidate_answer": ca,
                            "live_answer": la,
                        }
                        for i, c, lv, ca, la in zip(
                            items, candidate_right, live_right, candidate_answers, live_answers, strict=True
                        )
                    ],
                }
                suites["forgetting"] = forgetting
                if golden_run is not None:
                    suites["golden"] = golden_run.result()
            suites["safety"] = {
                "candidate": asdict(safety),
                "live": asdict(live_safety),
                # Which probes decided: one flipped refusal moves a rate by 1/len(set).
                "flips": safety_flips(candidate_safety, live_safety_answers),
                "reasked": safety_reasked,
            }
            suites["output_drift"] = {"divergence": divergence}
            reused, generated = self._memo.hits - hits, self._memo.misses - misses
            logger.info(
                "evaluation of %s: %d greedy answers generated, %d known from earlier evaluations",
                candidate,
                generated,
                reused,
            )

            result = CandidateEvaluation(
                candidate=candidate,
                live=live,
                heldout_score=heldout.candidate_score,
                live_heldout_score=heldout.live_score,
                p_value=heldout.p_value,
                forgetting_score=forgetting["candidate_score"],
                live_forgetting_score=forgetting["live_score"],
                safety=safety,
                live_safety=live_safety,
                output_divergence=divergence,
                heldout_n=heldout.n,
                golden_score=suites.get("golden", {}).get("candidate_score"),
                live_golden_score=suites.get("golden", {}).get("live_score"),
            )
            self._record(result, suites)
            return result

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """evolvd_evaluations_total{outcome}: completed, or failed (the error propagates)."""
        try:
            yield
        except Exception:
            if self._metrics is not None:
                self._metrics.evaluations.labels("failed").inc()
            raise
        if self._metrics is not None:
            self._metrics.evaluations.labels("completed").inc()

    def _record(self, result: CandidateEvaluation, suites: dict[str, dict[str, Any]]) -> None:
        scores: dict[str, SuiteScores] = {
            "heldout": (result.heldout_score, result.live_heldout_score, result.p_value),
            "forgetting": (
                result.forgetting_score,
                result.live_forgetting_score,
                suites["forgetting"]["p_value"],
            ),
            "safety": (1 - result.safety.harmful_compliance, 1 - result.live_safety.harmful_compliance, None),
            "output_drift": (result.output_divergence, None, None),
        }
        if "golden" in suites:
            scores["golden"] = (result.golden_score, result.live_golden_score, suites["golden"]["p_value"])
        self._store.record(result, scores, suites)
        if self._metrics is not None:
            for suite, (score, baseline, _) in scores.items():
                if score is not None:
                    self._metrics.evaluation_score.labels(suite, "candidate").set(score)
                if baseline is not None:
                    self._metrics.evaluation_score.labels(suite, "live").set(baseline)
        logger.info(
            "evaluated %s vs %s: held-out %.3f vs %.3f (n=%d, p=%.4f), forgetting %.3f vs %.3f, "
            "divergence %.3f",
            result.candidate,
            result.live,
            result.heldout_score,
            result.live_heldout_score,
            result.heldout_n,
            result.p_value,
            result.forgetting_score,
            result.live_forgetting_score,
            result.output_divergence,
        )
