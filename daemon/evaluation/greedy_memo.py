"""Greedy answers remembered across evaluations, so the live model is not asked the same thing twice.

Every evaluation answers the same probe sets (forgetting, safety, output drift) and mostly the same
held-out prompts with two models: the candidate and the live one. The live model was the candidate
of an earlier evaluation (or is the base, asked at the first one), and evolvd's adapter names are
unique per weights (<base>-v<N>-<weights hash>), so its greedy answers to those prompts are already
known. Reusing them roughly halves an evaluation's generation from the second one on; on a CPU that
is minutes of a cycle.

Only greedy single answers (temperature 0, n = 1) are remembered: those are a function of (model,
prompt, token budget). The memory is bounded (least recently used answers go first) and lives in the
daemon process, so a restart starts empty.
"""

from __future__ import annotations

import threading

from cachetools import LRUCache

from evolvd.connectors.vllm_client import ChatClient

DEFAULT_CAPACITY = 8192
"""Answers kept: a few thousand probe and held-out answers are a few MB of text."""


class GreedyAnswerMemo:
    """The answers; shared by the threads of one evaluation and kept between evaluations."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._answers: LRUCache[tuple[str, str, int], str] = LRUCache(maxsize=capacity)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, int]) -> str | None:
        with self._lock:
            answer = self._answers.get(key)
            if answer is None:
                self.misses += 1
            else:
                self.hits += 1
            return answer

    def put(self, key: tuple[str, str, int], answer: str) -> None:
        with self._lock:
            self._answers[key] = answer

    def through(self, client: ChatClient) -> MemoizedChat:
        return MemoizedChat(client, self)


class MemoizedChat:
    """A client's `chat` that answers greedy single requests from the memo when it can."""

    def __init__(self, client: ChatClient, memo: GreedyAnswerMemo) -> None:
        self._client = client
        self._memo = memo

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        if temperature != 0.0 or n != 1:
            return self._client.chat(model, prompt, max_tokens, temperature, n, top_p)
        key = (model, prompt, max_tokens)
        if (known := self._memo.get(key)) is not None:
            return [known]
        answers = self._client.chat(model, prompt, max_tokens)
        self._memo.put(key, answers[0])
        return answers
