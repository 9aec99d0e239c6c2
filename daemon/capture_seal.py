"""The gateway's seal on what it captured: an HMAC over the message id and the model that served it.

Canary feedback is judged on answers the gateway itself served; a producer can write any
`metadata.served_by` into the prompts topic, but without the buffer's key it cannot seal it, so
forged feedback never reaches a canary's window."""

from __future__ import annotations

import hashlib
import hmac


def seal(key: str, message_id: str, served_by: str) -> str:
    message = f"{message_id}\n{served_by}".encode()
    return hmac.new(bytes.fromhex(key), message, hashlib.sha256).hexdigest()


def is_sealed(key: str, message_id: str, served_by: str, value: object) -> bool:
    return isinstance(value, str) and hmac.compare_digest(value, seal(key, message_id, served_by))
