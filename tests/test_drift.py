"""The drift test on real prompts and the bundled MiniLM embeddings: it finds a real topic shift
and stays quiet (at its configured false-alarm level) on two samples of one distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SEED_TASKS

from evolvd.embeddings import embed
from evolvd.policies.drift import drift_report, mmd_permutation_test, output_divergence, topic_clusters
from evolvd.policies.loader import load_policies
from evolvd.workload import generate

POLICY = load_policies(None).drift


def seed_prompts() -> list[str]:
    rows = [json.loads(line) for line in SEED_TASKS.read_text().splitlines() if line.strip()]
    return [
        r["instruction"] + (f"\n{r['instances'][0]['input']}" if r["instances"][0]["input"] else "")
        for r in rows
    ]


@pytest.fixture(scope="module")
def corpora() -> dict[str, tuple[list[str], np.ndarray]]:
    texts = {
        "seed": seed_prompts(),
        "arithmetic": [t.prompt for t in generate("arithmetic", 160, seed=1)],
        "unit_conversion": [t.prompt for t in generate("unit_conversion", 160, seed=1)],
    }
    return {name: (t, embed(t)) for name, t in texts.items()}


def _report(ref: tuple[list[str], np.ndarray], rec: tuple[list[str], np.ndarray], seed: int = 0):  # type: ignore[no-untyped-def]
    return drift_report(POLICY, ref[0], rec[0], ref[1], rec[1], "first_window", seed)


def _take(corpus: tuple[list[str], np.ndarray], idx: np.ndarray) -> tuple[list[str], np.ndarray]:
    return [corpus[0][i] for i in idx], corpus[1][idx]


def test_switching_task_family_is_detected_and_trips_the_guard(
    corpora: dict[str, tuple[list[str], np.ndarray]],
) -> None:
    seed, arithmetic, units = corpora["seed"], corpora["arithmetic"], corpora["unit_conversion"]
    rng = np.random.default_rng(0)
    human = _take(seed, rng.permutation(len(seed[0]))[:80])
    to_arithmetic = _report(human, _take(arithmetic, np.arange(80)))
    assert to_arithmetic.significant and to_arithmetic.trigger_fired and to_arithmetic.guard_tripped
    assert to_arithmetic.mmd.p_value < POLICY.embedding.trigger_p_value
    assert to_arithmetic.features["topic"].drifted and to_arithmetic.features["length"].drifted
    family_switch = _report(_take(arithmetic, np.arange(80)), _take(units, np.arange(80)))
    assert family_switch.significant and family_switch.guard_tripped


def test_a_partial_shift_triggers_training_but_does_not_trip_the_guard(
    corpora: dict[str, tuple[list[str], np.ndarray]],
) -> None:
    arithmetic, units = corpora["arithmetic"], corpora["unit_conversion"]
    reference = _take(arithmetic, np.arange(80))
    mixed_idx = np.arange(80, 140)
    recent = (
        [*_take(arithmetic, mixed_idx)[0], *units[0][:20]],
        np.vstack([arithmetic[1][mixed_idx], units[1][:20]]),
    )
    report = _report(reference, recent)
    assert report.trigger_fired and not report.guard_tripped


def test_two_samples_of_one_distribution_rarely_alarm(
    corpora: dict[str, tuple[list[str], np.ndarray]],
) -> None:
    seed = corpora["seed"]
    draws, alarms = 30, 0
    for draw in range(draws):
        idx = np.random.default_rng(100 + draw).permutation(len(seed[0]))
        result = mmd_permutation_test(
            seed[1][idx[:80]], seed[1][idx[80:160]], POLICY.embedding.permutations, seed=draw
        )
        alarms += result.p_value < POLICY.embedding.trigger_p_value
    # At p < 0.01 the expected count is 0.3 of 30; 3 or more would mean the test is miscalibrated
    # (probability under a calibrated test: about 0.0033).
    assert alarms <= 2, f"{alarms} false alarms in {draws} draws"


def test_the_permutation_p_value_is_bounded_by_the_permutation_count() -> None:
    rng = np.random.default_rng(0)
    far = mmd_permutation_test(rng.normal(0, 1, (30, 4)), rng.normal(5, 1, (30, 4)), permutations=99)
    assert far.p_value == pytest.approx(1 / 100)
    with pytest.raises(ValueError, match="at least 2 samples on each side"):
        mmd_permutation_test(rng.normal(size=(1, 4)), rng.normal(size=(5, 4)), permutations=50)


def test_output_divergence_is_zero_for_the_same_answers_and_grows_with_change() -> None:
    same = embed(["Paris is the capital of France.", "Water boils at 100 C."])
    changed = embed(["Bananas are yellow.", "The stock market fell today."])
    assert output_divergence(same, same) == pytest.approx(0.0, abs=1e-6)
    assert output_divergence(changed, same) > POLICY.output.max_divergence
    with pytest.raises(ValueError, match="paired, non-empty"):
        output_divergence(same[:1], same)


def test_repeated_prompts_cluster_without_a_warning() -> None:
    # Three distinct prompts, repeated (one client asking the same things): fewer distinct points than
    # the policy's 8 topic clusters. The suite turns warnings into errors, so a k-means
    # ConvergenceWarning (logged on every drift check before) fails this test.
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(3, 8))
    reference = np.repeat(distinct, 10, axis=0)
    ref_topics, recent_topics = topic_clusters(reference, distinct, k=8)
    assert len(set(ref_topics)) == 3 and len(recent_topics) == 3
    assert ref_topics[:10] == [ref_topics[0]] * 10  # a repeated prompt stays in one cluster
