"""The answer text of a streamed OpenAI response, put together from the bytes the gateway relays.

The gateway passes vLLM's server-sent events to the client chunk by chunk as they arrive, and network
chunks cut lines (and multi-byte UTF-8 characters) anywhere: parsing each chunk on its own lost every
event that a cut went through. `StreamedText` keeps the unfinished line (and the unfinished character)
until the next chunk completes it. Libraries such as httpx-sse parse a response they consume
themselves; here the bytes must also go on to the client untouched, so the few lines are written out.
"""

from __future__ import annotations

import codecs
import json


class StreamedText:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial_line = ""
        self._pieces: list[str] = []

    def feed(self, chunk: bytes) -> None:
        *lines, self._partial_line = (self._partial_line + self._decoder.decode(chunk)).split("\n")
        for line in lines:
            self._event_line(line.rstrip("\r"))

    def finish(self) -> str:
        """The text of every delta, once the stream ended (a last line without its newline counts)."""
        last = self._partial_line + self._decoder.decode(b"", final=True)
        self._partial_line = ""
        if last:
            self._event_line(last.rstrip("\r"))
        return "".join(self._pieces)

    def _event_line(self, line: str) -> None:
        if not line.startswith("data:"):
            return  # blank separators, comments, `event:` and `id:` fields
        data = line[5:].removeprefix(" ")
        if data == "[DONE]":
            return
        try:
            choice = json.loads(data)["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            return
        self._pieces.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
