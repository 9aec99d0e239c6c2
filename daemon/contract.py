"""The prompts-topic message contract: decode one Kafka record into an event, feedback, or a dead letter.

msgspec decodes and type-checks the JSON in one C pass; this runs once per message on the ingest hot
path, where a pure-Python validator would cost more than the Kafka client itself.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec

from evolvd.abc import DeadLetter, Feedback, IngestBatch, SourceRecord


class DeadLetterReason(StrEnum):
    """Why a record was not ingested. A small fixed set: these are metric label values."""

    NO_VALUE = "no_value"
    OVERSIZED = "oversized"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    WRONG_TYPE = "wrong_type"
    EMPTY_PROMPT = "empty_prompt"
    NO_PROMPT = "no_prompt"
    AMBIGUOUS_PROMPT = "ambiguous_prompt"
    TOO_DEEP = "too_deep"
    BAD_TIMESTAMP = "bad_timestamp"
    UNDECODABLE = "undecodable"
    """The decoder failed in a way none of the reasons above names (a bug to report, not a stop)."""
    UNSTORABLE = "unstorable"
    """Valid by the contract, but the buffer refused the row; isolated from its batch by the writer."""


DEAD_LETTER_PREFIX_BYTES = 4096
"""How much of a dead letter's value is kept: enough to read what went wrong, bounded so that a
stream of oversized values cannot fill the disk. The full length and a sha256 are kept beside it."""

MAX_JSON_DEPTH = 64
"""How deep a message's JSON may nest. Chat content and metadata need a handful of levels; a value
nested hundreds deep is an attack on every reader that recurses (the decoder, the buffer's JSON
functions, the labeler), so it is refused here, once, with a reason."""

# The range Python's datetime (and so every reader of the buffer) can represent, in epoch seconds.
_MIN_EPOCH_S = datetime(1, 1, 2, tzinfo=UTC).timestamp()
_MAX_EPOCH_S = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


NonEmptyId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
FeedbackScore = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)]
"""A numeric feedback is a score on the scale of up (1) and down (-1): the canary's rollback check
averages feedback, so a score of 1e300 in one message would otherwise outweigh every thumbs-down."""


class ChatMessage(msgspec.Struct, frozen=True):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class PromptMessage(msgspec.Struct, frozen=True):
    """The JSON object on the prompts topic. Unknown fields are tolerated for forward compatibility."""

    id: NonEmptyId
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    response: str | None = None
    feedback: Literal["up", "down"] | FeedbackScore | None = None
    # Kept as the raw JSON slice: it is stored as JSON anyway, so re-encoding would be wasted work.
    metadata: msgspec.Raw = msgspec.Raw()
    ts: datetime | float | None = None


_decoder = msgspec.json.Decoder(PromptMessage)
_encoder = msgspec.json.Encoder()
_FEEDBACK_VALUES = {"up": 1.0, "down": -1.0}


def decode_into(record: SourceRecord, max_bytes: int, batch: IngestBatch) -> None:
    """Validate one record against the contract and append what it yields to `batch`.

    Never raises: every failure becomes a dead letter with a reason code and a precise detail.
    Does not touch `batch.next_offsets`; the caller advances positions.
    """
    try:
        _decode_into(record, max_bytes, batch)
    except RecursionError:
        _dead(batch, record, DeadLetterReason.TOO_DEEP, "JSON is nested deeper than the decoder's limit")
    except Exception as exc:
        _dead(batch, record, DeadLetterReason.UNDECODABLE, f"the decoder failed: {type(exc).__name__}: {exc}")


def _decode_into(record: SourceRecord, max_bytes: int, batch: IngestBatch) -> None:
    raw = record.value
    if raw is None:
        _dead(batch, record, DeadLetterReason.NO_VALUE, "record has no value (tombstone)")
        return
    if len(raw) > max_bytes:
        _dead(batch, record, DeadLetterReason.OVERSIZED, f"{len(raw)} bytes exceeds the limit of {max_bytes}")
        return
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and (depth := nesting_depth(raw)) > MAX_JSON_DEPTH:
        # The cheap count first: only a value with many brackets pays for the exact scan.
        detail = f"JSON nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
        _dead(batch, record, DeadLetterReason.TOO_DEEP, detail)
        return
    try:
        msg = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter for bad UTF-8
        reason, detail = _classify_decode_error(raw, exc)
        _dead(batch, record, reason, detail)
        return

    metadata = bytes(msg.metadata) if msg.metadata else None
    ts_epoch_s = _epoch_seconds(msg.ts)
    problem = _check_prompt(msg) or _check_metadata(metadata) or _check_timestamp(msg, ts_epoch_s)
    if problem is not None:
        _dead(batch, record, *problem)
        return

    if msg.feedback is not None:
        value = _FEEDBACK_VALUES[msg.feedback] if isinstance(msg.feedback, str) else float(msg.feedback)
        batch.feedback.append(
            Feedback(msg.id, value, str(msg.feedback), record.topic, record.partition, record.offset)
        )
    if msg.prompt is None and msg.messages is None:
        return  # a late feedback event for an earlier prompt

    ev = batch.events
    ev.id.append(msg.id)
    ev.topic.append(record.topic)
    ev.partition.append(record.partition)
    ev.offset.append(record.offset)
    ev.prompt.append(msg.prompt)
    ev.messages_json.append(_encoder.encode(msg.messages).decode() if msg.messages is not None else None)
    ev.response.append(msg.response)
    ev.metadata_json.append(metadata.decode() if metadata is not None and metadata != b"null" else None)
    ev.ts_epoch_s.append(ts_epoch_s)
    ev.kafka_ts_ms.append(record.timestamp)


def _check_prompt(msg: PromptMessage) -> tuple[DeadLetterReason, str] | None:
    has_prompt, has_messages = msg.prompt is not None, msg.messages is not None
    if has_prompt and has_messages:
        return DeadLetterReason.AMBIGUOUS_PROMPT, "give either `prompt` or `messages`, not both"
    if not has_prompt and not has_messages:
        if msg.feedback is not None:
            return None
        return DeadLetterReason.NO_PROMPT, "message has neither `prompt`, `messages` nor `feedback`"
    if msg.prompt is not None and not msg.prompt.strip():
        return DeadLetterReason.EMPTY_PROMPT, "`prompt` is empty or whitespace"
    if msg.messages is not None and not any(_has_text(m) for m in msg.messages):
        return DeadLetterReason.EMPTY_PROMPT, "`messages` has no message with content"
    return None


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _check_metadata(metadata: bytes | None) -> tuple[DeadLetterReason, str] | None:
    if metadata is None or metadata == b"null":
        return None
    if not metadata.startswith(b"{"):
        return DeadLetterReason.WRONG_TYPE, "Expected `object`, got another type - at `$.metadata`"
    return None


def _check_timestamp(msg: PromptMessage, ts_epoch_s: float | None) -> tuple[DeadLetterReason, str] | None:
    if ts_epoch_s is not None and not _MIN_EPOCH_S <= ts_epoch_s <= _MAX_EPOCH_S:
        return (
            DeadLetterReason.BAD_TIMESTAMP,
            f"`ts` {msg.ts!r} is outside years 1-9999 (epoch seconds, or milliseconds above 1e11)",
        )
    return None


def _dead(batch: IngestBatch, record: SourceRecord, reason: DeadLetterReason, detail: str) -> None:
    batch.dead_letters.append(
        dead_letter(record.topic, record.partition, record.offset, reason, detail, record.value)
    )


def dead_letter(
    topic: str, partition: int, offset: int, reason: DeadLetterReason, detail: str, value: bytes | None
) -> DeadLetter:
    """A dead letter that keeps a bounded prefix of `value`, its full length and its sha256."""
    if value is None:
        return DeadLetter(topic, partition, offset, reason.value, detail, None)
    prefix = value[:DEAD_LETTER_PREFIX_BYTES]
    return DeadLetter(
        topic, partition, offset, reason.value, detail, prefix, len(value), hashlib.sha256(value).hexdigest()
    )


def _classify_decode_error(raw: bytes, exc: Exception) -> tuple[DeadLetterReason, str]:
    # Only the failure path pays for telling these apart.
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as ude:
        return DeadLetterReason.NOT_UTF8, f"value is not UTF-8: {ude.reason} at byte {ude.start}"
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        if text.startswith("Expected `object`") and "- at `$" not in text:
            return DeadLetterReason.NOT_OBJECT, f"value must be a JSON object: {text}"
        return DeadLetterReason.WRONG_TYPE, text
    return DeadLetterReason.NOT_JSON, f"value is not JSON: {exc}"


def _epoch_seconds(ts: datetime | float | None) -> float | None:
    if ts is None:
        return None
    if isinstance(ts, datetime):
        return (ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)).timestamp()
    return ts / 1000.0 if ts > 1e11 else float(ts)  # epoch seconds or milliseconds


def _has_text(message: ChatMessage) -> bool:
    content = message.content
    if isinstance(content, str):
        return bool(content.strip())
    return bool(content)


def encode_message(
    id: str,
    prompt: str | None = None,
    *,
    messages: list[dict[str, Any]] | None = None,
    response: str | None = None,
    feedback: str | float | None = None,
    metadata: dict[str, Any] | None = None,
    ts: float | None = None,
) -> bytes:
    """Build a contract-conforming message (used by `evolvd produce`, the gateway and tests)."""
    body: dict[str, Any] = {"id": id}
    for key, value in (
        ("prompt", prompt),
        ("messages", messages),
        ("response", response),
        ("feedback", feedback),
        ("metadata", metadata),
        ("ts", ts),
    ):
        if value is not None:
            body[key] = value
    return _encoder.encode(body)
