"""A small client for the control side of vLLM's OpenAI server: health, models, LoRA load/unload, probes.

Only connection failures are retried (the request never reached the server); an answer, even an
error, is returned to the caller, because a load that reached vLLM must not be blindly repeated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from tenacity import before_sleep_log, retry, retry_if_exception_type, stop_after_attempt, wait_exponential

logger = logging.getLogger("evolvd.vllm")

_retry_connect = retry(
    retry=retry_if_exception_type(httpx.ConnectError),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.2, max=2),
    before_sleep=before_sleep_log(logger, logging.WARNING),
    reraise=True,
)


# How long an idle pooled connection to vLLM may be reused. vLLM (uvicorn) closes idle keep-alive
# connections after VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by default, and httpx keeps them 5 s too: a request
# sent on a connection the server is closing at that instant fails with "Server disconnected without
# sending a response". Expiring ours well before the server's (the server evolvd supervises is also
# given a longer keep-alive, see SERVER_KEEPALIVE_S) leaves no such window, with external servers too.
CLIENT_KEEPALIVE_S = 2.0
SERVER_KEEPALIVE_S = 30


# vLLM's answer to loading a name it already holds (vllm/entrypoints/openai/models/serving.py).
ALREADY_LOADED = "has already been loaded"


def bearer_header(api_key: str | None) -> dict[str, str]:
    """The Authorization header for a server with `api_key` (none for a server without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class VLLMError(RuntimeError):
    """vLLM answered with an error; `status` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ChatClient(Protocol):
    """What answering prompts needs of a client: VLLMClient, or the evaluation's memoizing wrapper."""

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]: ...


@dataclass(frozen=True)
class ProbeResult:
    model: str
    text: str
    latency_s: float


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)[:500]


class VLLMClient:
    def __init__(
        self, base_url: str, timeout_s: float = 30.0, api_key: str | None = None, health_path: str = "/health"
    ) -> None:
        """`api_key`: the server's API key (vLLM's `--api-key`), sent as a bearer token. `health_path`:
        what `healthy` asks (a router in front of replicas may answer readiness elsewhere)."""
        self.base_url = base_url.rstrip("/")
        self._health_path = health_path
        self.api_key = api_key
        limits = httpx.Limits(keepalive_expiry=CLIENT_KEEPALIVE_S)
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout_s, limits=limits, headers=bearer_header(api_key)
        )

    def close(self) -> None:
        self._http.close()

    def healthy(self) -> bool:
        try:
            return self._http.get(self._health_path, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    @_retry_connect
    def models(self) -> list[str]:
        response = self._http.get("/v1/models")
        if response.status_code != 200:
            raise VLLMError(f"listing models failed: {_error_text(response)}", response.status_code)
        return [m["id"] for m in response.json()["data"]]

    @_retry_connect
    def _post_retrying(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._http.post(path, json=body)

    def _post_lora(self, path: str, body: dict[str, Any], what: str) -> httpx.Response:
        """A LoRA endpoint call; a server that does not answer (after the connect retries) is a
        VLLMError with status 0, as a generation request's is, so callers handle one kind of error."""
        try:
            return self._post_retrying(path, body)
        except httpx.HTTPError as exc:
            raise VLLMError(f"{what} got no answer: {exc}") from exc

    def load_adapter(self, name: str, path: str) -> None:
        body = {"lora_name": name, "lora_path": path}
        response = self._post_lora("/v1/load_lora_adapter", body, f"loading {name}")
        if response.status_code == 200:
            return
        message = _error_text(response)
        # evolvd names are unique per content (<base>-v<N>-<weights hash>), so a name vLLM already
        # holds is these very weights: loaded by this daemon before it restarted (external mode keeps
        # the server), or a load whose answer was lost. Either way the adapter is there.
        if ALREADY_LOADED in message:
            logger.info("vLLM already holds adapter %s", name)
            return
        raise VLLMError(f"vLLM refused adapter {name}: {message}", response.status_code)

    def unload_adapter(self, name: str) -> None:
        response = self._post_lora("/v1/unload_lora_adapter", {"lora_name": name}, f"unloading {name}")
        if response.status_code != 200:
            raise VLLMError(f"unloading {name} failed: {_error_text(response)}", response.status_code)

    def metrics_text(self) -> str:
        response = self._http.get("/metrics", timeout=10)
        if response.status_code != 200:
            raise VLLMError(f"vLLM /metrics failed: {_error_text(response)}", response.status_code)
        return response.text

    def _generate(self, path: str, body: dict[str, Any], what: str) -> httpx.Response:
        """POST a generation request; no answer or a non-200 becomes a VLLMError naming `what`."""
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise VLLMError(f"{what} got no answer: {exc}") from exc
        if response.status_code != 200:
            raise VLLMError(f"{what} failed: {_error_text(response)}", response.status_code)
        return response

    def probe(self, model: str, prompt: str, max_tokens: int = 1) -> ProbeResult:
        """One greedy completion through `model`: proves it is loaded and produces text."""
        body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        response = self._generate("/v1/completions", body, f"probe of {model}")
        data = response.json()
        if data.get("model") != model or not data.get("choices"):
            raise VLLMError(f"probe of {model} was answered by {data.get('model')!r} with no choices")
        return ProbeResult(model, data["choices"][0].get("text", ""), response.elapsed.total_seconds())

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str:
        """The model's greedy pick among `choices` (vLLM structured outputs constrain the decoding)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": max(len(c) for c in choices) + 4,
            "temperature": 0,
            "structured_outputs": {"choice": choices},
        }
        response = self._generate("/v1/chat/completions", body, f"choice from {model}")
        return str(response.json()["choices"][0]["message"].get("content") or "")

    def next_token_logprobs(
        self, model: str, messages: list[dict[str, str]], top_logprobs: int = 20
    ) -> dict[str, float]:
        """token -> logprob of the `top_logprobs` likeliest next tokens after `messages`. A last
        assistant message is continued, not answered (vLLM's continue_final_message), so a reply can
        be begun for the model: `Score: ` makes its next token the score."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": top_logprobs,
        }
        if messages and messages[-1]["role"] == "assistant":
            body |= {"add_generation_prompt": False, "continue_final_message": True}
        response = self._generate("/v1/chat/completions", body, f"logprobs from {model}")
        content = (response.json()["choices"][0].get("logprobs") or {}).get("content") or []
        if not content:
            raise VLLMError(f"logprobs from {model}: the answer carries none", 400)
        out: dict[str, float] = {}
        for entry in content[0].get("top_logprobs") or []:
            token, logprob = str(entry["token"]), float(entry["logprob"])
            out[token] = max(out.get(token, -math.inf), logprob)
        return out

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        """The answers of `model` to one user prompt through the chat template (n samples)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "n": n,
        }
        response = self._generate("/v1/chat/completions", body, f"chat with {model}")
        return [choice["message"].get("content") or "" for choice in response.json()["choices"]]
