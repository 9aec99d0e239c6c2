"""The message contract: what becomes an event, feedback, or a dead letter (and with which reason)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from evolvd.abc import IngestBatch, Record
from evolvd.contract import (
    DEAD_LETTER_PREFIX_BYTES,
    DeadLetterReason,
    decode_into,
    encode_message,
    nesting_depth,
)

LIMIT = 1024


def decode(value: bytes | None, offset: int = 7) -> IngestBatch:
    batch = IngestBatch()
    decode_into(Record("prompts", 3, offset, value, 1_763_750_000_000), LIMIT, batch)
    return batch


def dead_reason(value: bytes | None) -> tuple[str, str]:
    batch = decode(value)
    assert len(batch.events) == 0 and not batch.feedback
    (dl,) = batch.dead_letters
    assert (dl.topic, dl.partition, dl.offset, dl.raw) == ("prompts", 3, 7, value)
    return dl.reason, dl.detail


def test_plain_prompt_becomes_an_event() -> None:
    batch = decode(
        encode_message("a1", "What is 2+2?", response="4", metadata={"user": "u"}, ts=1763750000.5)
    )
    ev = batch.events
    assert ev.id == ["a1"] and ev.prompt == ["What is 2+2?"] and ev.response == ["4"]
    assert json.loads(ev.metadata_json[0] or "") == {"user": "u"}
    assert ev.ts_epoch_s == [1763750000.5]
    assert (ev.topic, ev.partition, ev.offset, ev.kafka_ts_ms) == (["prompts"], [3], [7], [1_763_750_000_000])
    assert not batch.dead_letters


def test_chat_messages_become_an_event() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    batch = decode(encode_message("c1", messages=msgs))
    assert batch.events.prompt == [None]
    assert json.loads(batch.events.messages_json[0] or "") == msgs


def test_iso_timestamp_and_millisecond_epoch_are_understood() -> None:
    iso = decode(json.dumps({"id": "t1", "prompt": "p", "ts": "2026-11-21T10:00:00Z"}).encode())
    naive = decode(json.dumps({"id": "t2", "prompt": "p", "ts": "2026-11-21T10:00:00"}).encode())
    expected = datetime(2026, 11, 21, 10, tzinfo=UTC).timestamp()
    millis = decode(json.dumps({"id": "t3", "prompt": "p", "ts": expected * 1000}).encode())
    assert iso.events.ts_epoch_s == naive.events.ts_epoch_s == [expected]
    assert millis.events.ts_epoch_s == [expected]


@pytest.mark.parametrize(("raw", "value"), [("up", 1.0), ("down", -1.0), (0.25, 0.25)])
def test_feedback_alone_is_recorded_against_the_id(raw: str | float, value: float) -> None:
    batch = decode(encode_message("a1", feedback=raw))
    assert len(batch.events) == 0 and not batch.dead_letters
    (fb,) = batch.feedback
    assert (fb.event_id, fb.value, fb.raw, fb.offset) == ("a1", value, str(raw), 7)


def test_prompt_with_feedback_gives_both() -> None:
    batch = decode(encode_message("a1", "hi", feedback="up"))
    assert batch.events.id == ["a1"]
    assert batch.feedback[0].value == 1.0


def test_unknown_fields_are_tolerated() -> None:
    assert decode(json.dumps({"id": "a", "prompt": "p", "trace_id": "abc"}).encode()).events.id == ["a"]


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (None, DeadLetterReason.NO_VALUE, "tombstone"),
        (b"x" * (LIMIT + 1), DeadLetterReason.OVERSIZED, f"{LIMIT + 1} bytes exceeds the limit of {LIMIT}"),
        (b'{"id": "a", "prompt": "caf\xe9"}', DeadLetterReason.NOT_UTF8, "not UTF-8"),
        (b"this is not json", DeadLetterReason.NOT_JSON, "not JSON"),
        (b'{"id": "a", "prompt": "unterminated', DeadLetterReason.NOT_JSON, "not JSON"),
        (b"[1, 2, 3]", DeadLetterReason.NOT_OBJECT, "JSON object"),
        (b'"just a string"', DeadLetterReason.NOT_OBJECT, "JSON object"),
        (b'{"id": 5, "prompt": "p"}', DeadLetterReason.WRONG_TYPE, "$.id"),
        (b'{"prompt": "p"}', DeadLetterReason.WRONG_TYPE, "missing required field `id`"),
        (b'{"id": "", "prompt": "p"}', DeadLetterReason.WRONG_TYPE, "$.id"),
        (b'{"id": "a", "prompt": ["p"]}', DeadLetterReason.WRONG_TYPE, "$.prompt"),
        (b'{"id": "a", "prompt": "p", "feedback": "meh"}', DeadLetterReason.WRONG_TYPE, "$.feedback"),
        (b'{"id": "a", "prompt": "p", "metadata": [1]}', DeadLetterReason.WRONG_TYPE, "$.metadata"),
        (
            b'{"id": "a", "messages": [{"role": "wizard", "content": "x"}]}',
            DeadLetterReason.WRONG_TYPE,
            "role",
        ),
        (b'{"id": "a", "prompt": "p", "ts": "yesterday"}', DeadLetterReason.WRONG_TYPE, "$.ts"),
        (b'{"id": "a", "prompt": "   "}', DeadLetterReason.EMPTY_PROMPT, "empty"),
        (b'{"id": "a", "messages": []}', DeadLetterReason.EMPTY_PROMPT, "no message with content"),
        (
            b'{"id": "a", "messages": [{"role": "user", "content": ""}]}',
            DeadLetterReason.EMPTY_PROMPT,
            "content",
        ),
        (b'{"id": "a"}', DeadLetterReason.NO_PROMPT, "neither"),
        # Values that used to pass the contract and then stop ingest (issue 20's poison pills).
        (
            b'{"id": "a", "prompt": "p", "metadata": {"x": ' + b"[" * 100 + b"]" * 100 + b"}}",
            DeadLetterReason.TOO_DEEP,
            "JSON nests 102 levels deep; the limit is 64",
        ),
        (b"[" * 400 + b"]" * 400, DeadLetterReason.TOO_DEEP, "400 levels"),
        (b'{"id": "a", "prompt": "p", "ts": 1e20}', DeadLetterReason.BAD_TIMESTAMP, "`ts` 1e+20 is outside"),
        (b'{"id": "a", "prompt": "p", "ts": -1e15}', DeadLetterReason.BAD_TIMESTAMP, "years 1-9999"),
        (
            b'{"id": "a", "prompt": "p", "ts": "9999-12-31T23:59:59-14:00"}',
            DeadLetterReason.BAD_TIMESTAMP,
            "`ts`",
        ),
        (b'{"id": "a", "prompt": "p", "feedback": 1e400}', DeadLetterReason.WRONG_TYPE, "$.feedback"),
        (b'{"id": "a", "prompt": "p", "feedback": -1e300}', DeadLetterReason.WRONG_TYPE, ">= -1.0"),
        (b'{"id": "a", "feedback": 5}', DeadLetterReason.WRONG_TYPE, "<= 1.0 - at `$.feedback`"),
        (
            b'{"id": "a", "prompt": "p", "metadata": {"k": "\\ud800"}}',
            DeadLetterReason.NOT_JSON,
            "not JSON",
        ),
        (b'{"id": "a", "prompt": "\\udc00"}', DeadLetterReason.NOT_JSON, "not JSON"),
        (
            b'{"id": "a", "prompt": "p", "messages": [{"role": "user", "content": "q"}]}',
            DeadLetterReason.AMBIGUOUS_PROMPT,
            "not both",
        ),
    ],
)
def test_bad_messages_become_dead_letters_with_a_reason(
    value: bytes | None, reason: str, detail: str
) -> None:
    got_reason, got_detail = dead_reason(value)
    assert got_reason == reason
    assert detail in got_detail


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    prompt = "[" * 300 + "{" * 300
    batch = decode(encode_message("b1", prompt, metadata={"a": {"b": [[1]]}}))
    assert batch.events.prompt == [prompt] and not batch.dead_letters
    assert nesting_depth(encode_message("b2", '\\"[[[', metadata={"a": [1]})) == 3


def test_a_dead_letter_keeps_a_bounded_prefix_the_full_length_and_a_hash() -> None:
    value = b'{"id": "big", "prompt": "' + b"x" * 200_000 + b'"}'
    batch = decode(value)
    (dl,) = batch.dead_letters
    assert dl.reason == DeadLetterReason.OVERSIZED
    assert dl.raw == value[:DEAD_LETTER_PREFIX_BYTES] and len(dl.raw) == 4096
    assert dl.raw_bytes == len(value) and dl.raw_sha256 == hashlib.sha256(value).hexdigest()
