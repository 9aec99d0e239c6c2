"""Which candidates the loop evaluates: trained ones, and operators' adapters registered with
`--evaluate` (gated); a plainly registered adapter waits for the operator (a real buffer on each backend)."""

from __future__ import annotations

from pathlib import Path

from evolvd.buffer import Buffer
from evolvd.serving.registry import AdapterRegistry, AdapterStatus


def test_only_trained_and_gated_candidates_are_evaluated_oldest_first(
    tmp_path: Path, either_buffer: Buffer
) -> None:
    buffer = either_buffer
    registry = AdapterRegistry(buffer)
    registry.add("plain-v1", 1, tmp_path / "a", {}, None)  # an operator's: waits for promote/canary
    registry.add("gated-v2", 2, tmp_path / "b", {}, None, gated=True)
    buffer.cursor().execute(
        "INSERT INTO runs (run_id, dataset_id, kind, status, config)"
        " VALUES ('r3', 'd', 'sft', 'succeeded', '{}')"
    )
    registry.add("trained-v3", 3, tmp_path / "c", {}, None, run_id="r3")
    assert registry.next_to_evaluate("base") == "gated-v2"
    buffer.cursor().execute(
        "INSERT INTO evaluations (adapter_name, baseline_name, suite, score, details)"
        " VALUES ('gated-v2', 'base', 'summary', 0.5, '{}')"
    )
    assert registry.next_to_evaluate("base") == "trained-v3"
    # Against a new live adapter the gated one is evaluated again; the plain one never is.
    assert registry.next_to_evaluate("trained-v3") == "gated-v2"
    registry.set_status("gated-v2", AdapterStatus.REJECTED, "test")
    registry.set_status("trained-v3", AdapterStatus.LIVE, "test")
    assert registry.next_to_evaluate("trained-v3") is None
    assert registry.undecided_trained() is None  # the trained one is decided (live)
    registry.set_status("plain-v1", AdapterStatus.RETIRED, "test")
    assert [name for name, _, _ in registry.disposable(0)] == ["gated-v2", "plain-v1"]
