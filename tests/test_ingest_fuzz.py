"""Fuzzing the ingest path: 100,000+ generated messages through the real contract, the real writer and a
real DuckDB buffer. Every valid message must become an event (or a feedback row), every invalid one a
dead letter at its offset, and nothing may raise or stall.

Each generated message is a template and the kind the generator built it as; the test gives it a
unique id and an offset, so the buffer can be checked message by message. Hypothesis draws about
0.1-5 ms per message here, so 100,000 separate draws would take minutes: each example instead draws
pools of message contents (valid and broken ones) and a seeded random stream from Hypothesis, and
interleaves 500 messages from them, each under a fresh id at a fresh offset. That is roughly 30
distinct contents per batch, 6,000 over the run, mixed differently in every batch (the writer's
batch-level behaviour is what the mixing tests).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evolvd.abc import IngestBatch, Record
from evolvd.buffer import DuckDBBuffer
from evolvd.contract import MAX_JSON_DEPTH, decode_into
from evolvd.ingest import IngestWriter
from evolvd.metrics import IngestMetrics, new_registry

MAX_BYTES = 16_384
MESSAGES_PER_EXAMPLE = 500
EXAMPLES = 201

Kind = Literal["event", "feedback", "dead"]


@dataclass(frozen=True)
class Generated:
    kind: Kind
    build: Callable[[str], bytes | None]
    """The message's bytes, given its id."""


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


# -- valid parts ----------------------------------------------------------------------------------

text = st.text(max_size=60)
non_blank = text.filter(lambda t: bool(t.strip()))
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
metadata = st.dictionaries(text, json_values, max_size=5)
big_metadata = st.builds(
    lambda n, v: {"blob": v * n}, st.integers(100, 2_000), st.sampled_from(["ab", "é", "🙂"])
)
good_ts = (
    st.floats(0, 4e9)  # epoch seconds
    | st.integers(1_000_000_000_000, 4_000_000_000_000)  # epoch milliseconds
    | st.datetimes(datetime(1970, 1, 2), datetime(2200, 1, 1), timezones=st.just(UTC)).map(datetime.isoformat)
)
feedback = st.sampled_from(["up", "down"]) | st.floats(-1, 1) | st.integers(-1, 1)
role = st.sampled_from(["system", "user", "assistant", "tool", "developer"])
chat = st.lists(st.fixed_dictionaries({"role": role, "content": text}), max_size=4).flatmap(
    lambda rest: st.builds(
        lambda first: [first, *rest], st.fixed_dictionaries({"role": role, "content": non_blank})
    )
)
optional = st.fixed_dictionaries(
    {},
    optional={"response": text, "metadata": metadata | big_metadata, "ts": good_ts, "feedback": feedback},
)


def _with_id(doc: dict[str, Any]) -> Callable[[str], bytes]:
    return lambda ident: _json({"id": ident, **doc})


valid_prompt = st.builds(lambda p, rest: {"prompt": p, **rest}, non_blank, optional)
valid_chat = st.builds(lambda m, rest: {"messages": m, **rest}, chat, optional)
events = (valid_prompt | valid_chat).map(lambda d: Generated("event", _with_id(d)))
late_feedback = feedback.map(lambda f: Generated("feedback", _with_id({"feedback": f})))

# -- invalid messages, each built to break one rule -----------------------------------------------


def _nested(depth: int, opener: str = "[") -> str:
    closer = {"[": "]", "{": "}"}[opener]
    inner = '"x":' if opener == "{" else ""
    return (opener + inner) * depth + "1" * (opener == "{") + closer * depth


deep_where = st.sampled_from(["metadata", "content", "top"])


def _deep(depth: int, where: str, opener: str) -> Callable[[str], bytes]:
    nest = _nested(depth, opener)
    if where == "metadata":
        return lambda i: f'{{"id": "{i}", "prompt": "p", "metadata": {{"k": {nest}}}}}'.encode()
    if where == "content":
        return lambda i: (
            f'{{"id": "{i}", "messages": [{{"role": "user", "content": [{{"k": {nest}}}]}}]}}'.encode()
        )
    return lambda _i: nest.encode()


deep = st.builds(_deep, st.integers(MAX_JSON_DEPTH, 3_000), deep_where, st.sampled_from(["[", "{"]))
huge_number = st.sampled_from(
    ["1e20", "-1e15", "1e308", "-1e308", "1e400", "-1e400", "9" * 400, "NaN", "Infinity"]
)
bad_ts_value = huge_number | st.sampled_from(
    ['"yesterday"', '"0000-01-01T00:00:00"', '"9999-12-31T23:59:59-14:00"', "[]", "{}", "true", '""']
)
lone_surrogate = st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "a\\udc00b", "\\ud800\\u0041"])
surrogate_field = st.sampled_from(["id", "prompt", "metadata", "response", "content"])


def _surrogate(escape: str, field: str) -> Callable[[str], bytes]:
    templates = {
        "id": '{{"id": "{e}", "prompt": "p"}}',
        "prompt": '{{"id": "{i}", "prompt": "{e}"}}',
        "metadata": '{{"id": "{i}", "prompt": "p", "metadata": {{"k": "{e}"}}}}',
        "response": '{{"id": "{i}", "prompt": "p", "response": "{e}"}}',
        "content": '{{"id": "{i}", "messages": [{{"role": "user", "content": "{e}"}}]}}',
    }
    return lambda i: templates[field].format(i=i, e=escape).encode()


wrong_type = st.sampled_from(
    [
        '{{"id": 7, "prompt": "p"}}',
        '{{"id": "{i}", "prompt": ["p"]}}',
        '{{"id": "{i}", "prompt": "p", "metadata": [1, 2]}}',
        '{{"id": "{i}", "prompt": "p", "metadata": "m"}}',
        '{{"id": "{i}", "messages": [{{"role": "wizard", "content": "x"}}]}}',
        '{{"id": "{i}", "messages": "hi"}}',
        '{{"id": "{i}", "prompt": "p", "feedback": "meh"}}',
        '{{"id": "{i}", "prompt": "p", "response": 5}}',
        '{{"id": "", "prompt": "p"}}',
        '{{"prompt": "p"}}',
        '{{"id": "{i}", "prompt": "   "}}',
        '{{"id": "{i}", "messages": []}}',
        '{{"id": "{i}"}}',
        '{{"id": "{i}", "prompt": "p", "messages": [{{"role": "user", "content": "q"}}]}}',
    ]
).map(lambda t: lambda i: t.format(i=i).encode())


def _truncated(doc: dict[str, Any], cut: float) -> Callable[[str], bytes]:
    def build(ident: str) -> bytes:
        whole = _json({"id": ident, **doc})
        return whole[: max(1, int(len(whole) * cut))]  # every proper prefix of a JSON object is invalid

    return build


invalid_builders = st.one_of(
    deep,
    st.builds(lambda v: lambda i: f'{{"id": "{i}", "prompt": "p", "ts": {v}}}'.encode(), bad_ts_value),
    st.builds(lambda v: lambda i: f'{{"id": "{i}", "prompt": "p", "feedback": {v}}}'.encode(), huge_number),
    st.builds(_surrogate, lone_surrogate, surrogate_field),
    wrong_type,
    st.builds(_truncated, valid_prompt, st.floats(0.05, 0.95)),
    st.binary(max_size=200).map(lambda b: lambda _i: b"\xff" + b),  # never UTF-8
    st.builds(lambda n: lambda i: _json({"id": i, "prompt": "x" * n}), st.integers(MAX_BYTES, 3 * MAX_BYTES)),
    st.just(lambda _i: None),  # a tombstone
)
invalid = invalid_builders.map(lambda build: Generated("dead", build))


@st.composite
def traffic(draw: st.DrawFn) -> list[Generated]:
    """MESSAGES_PER_EXAMPLE messages interleaved from drawn pools of contents."""
    pools = [
        draw(st.lists(events, min_size=1, max_size=12)),
        draw(st.lists(late_feedback, min_size=1, max_size=3)),
        draw(st.lists(invalid, min_size=1, max_size=16)),
    ]
    weights = draw(st.tuples(st.integers(0, 10), st.integers(0, 3), st.integers(0, 10)))
    # A drawn seed, not st.randoms(): Hypothesis-driven randomness costs ~150 us per call.
    rng = random.Random(draw(st.integers(0, 2**32)))
    chosen = rng.choices(pools, weights=[w + 0.1 for w in weights], k=MESSAGES_PER_EXAMPLE)
    return [rng.choice(pool) for pool in chosen]


def _check(buffer: DuckDBBuffer, first: int, kinds: Mapping[int, Kind]) -> None:
    cur = buffer.cursor()
    last = first + len(kinds) - 1
    got_events = {
        o
        for (o,) in cur.execute(
            "SELECT kafka_offset FROM events WHERE kafka_offset BETWEEN ? AND ?", [first, last]
        ).fetchall()
    }
    got_dead = {
        o
        for (o,) in cur.execute(
            "SELECT kafka_offset FROM dead_letters WHERE kafka_offset BETWEEN ? AND ?", [first, last]
        ).fetchall()
    }
    got_feedback = {
        o
        for (o,) in cur.execute(
            "SELECT kafka_offset FROM feedback WHERE kafka_offset BETWEEN ? AND ?", [first, last]
        ).fetchall()
    }
    want = {kind: {o for o, k in kinds.items() if k == kind} for kind in ("event", "feedback", "dead")}
    assert got_events == want["event"], (
        "valid messages that are not events",
        sorted(want["event"] - got_events)[:5],
        "events that should be dead letters",
        sorted(got_events - want["event"])[:5],
    )
    assert got_dead == want["dead"], (
        "invalid messages without a dead letter",
        sorted(want["dead"] - got_dead)[:5],
        "valid messages dead-lettered",
        sorted(got_dead - want["dead"])[:5],
    )
    assert want["feedback"] <= got_feedback and not (got_feedback & want["dead"])


def test_a_hundred_thousand_generated_messages_each_become_an_event_or_a_dead_letter(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "fuzz.duckdb")
    writer = IngestWriter(buffer, IngestMetrics.create(new_registry()), lambda _offsets, _events: None)
    position = {"next": 0}
    total = {"messages": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(traffic())
    def every_message_lands_once(generated: list[Generated]) -> None:
        first = position["next"]
        batch, kinds = IngestBatch(), {}
        for n, item in enumerate(generated):
            offset = first + n
            decode_into(Record("fuzz", 0, offset, item.build(f"m{offset}"), None), MAX_BYTES, batch)
            kinds[offset] = item.kind
        batch.next_offsets[("fuzz", 0)] = first + len(generated)
        position["next"] = first + len(generated)
        total["messages"] += len(generated)
        writer.write(batch.seal())
        assert writer.stall.failing_since is None
        _check(buffer, first, kinds)

    every_message_lands_once()
    assert total["messages"] >= 100_000
    assert buffer.stored_offsets("fuzz") == {0: position["next"]}
    dead_by_reason = buffer.dead_letters_by_reason()
    # The generator reached every rule it was built to break.
    assert {
        "too_deep",
        "bad_timestamp",
        "not_json",
        "not_utf8",
        "wrong_type",
        "oversized",
        "no_value",
    } <= set(dead_by_reason), dead_by_reason
    assert not math.isnan(sum(dead_by_reason.values()))
    buffer.close()
