"""Adapters served by a fleet of vLLM replicas that share one adapter directory.

Every replica runs vLLM's filesystem LoRA resolver over the same directory (`VLLM_PLUGINS=
lora_filesystem_resolver`, `VLLM_LORA_RESOLVER_CACHE_DIR=<serving.adapter_dir>`). Registration
publishes an adapter there by an atomic rename of its uniquely named folder (evolvd.serving.
adapter_store), so there is no load call per replica: the first request naming the adapter makes a
replica load it, and a replica that restarts loads it again the same way. A router in front of the
replicas (vllm-router) balances the traffic; the daemon's gateway and jobs talk to the router.

Before the alias may point at an adapter, every replica is asked for it directly, and all must give
the same greedy answer: a replica that cannot read the folder, or serves something else under the
name, would otherwise answer a share of the alias traffic with the wrong model. The swap then flips
the alias once for the whole fleet, and a rollback flips it back for the whole fleet.

A replica that does not answer at all (down, restarting) is not checked and does not stop the swap:
the router sends it no traffic while it is away, and when it is back it serves the adapter from the
same folder. Refusing instead would turn a rolling restart of the replicas into a rollback of the live
adapter: after a serving outage the daemon re-checks what its alias routes to, and an adapter that
fails that check is routed to no more (evolvd.serving.hotswap.reapply). At least one replica must
answer.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evolvd.connectors.vllm_client import ProbeResult, VLLMClient, VLLMError

logger = logging.getLogger("evolvd.fleet")

CONSISTENCY_TOKENS = 8
"""Greedy tokens compared across replicas: enough that two different adapters rarely agree."""


class ReplicasDisagreeError(VLLMError):
    """The replicas gave different greedy answers with one adapter (or some could not serve it)."""


class ReplicaFleet:
    """The swapper's adapter endpoints (evolvd.serving.hotswap.AdapterEndpoints) for a fleet."""

    def __init__(
        self, replica_urls: list[str], adapter_dir: Path, api_key: str | None, timeout_s: float = 60.0
    ) -> None:
        self.adapter_dir = adapter_dir
        self._clients = [VLLMClient(url, timeout_s=timeout_s, api_key=api_key) for url in replica_urls]
        self._pool = ThreadPoolExecutor(len(self._clients), thread_name_prefix="evolvd-fleet-probe")

    @property
    def replica_urls(self) -> list[str]:
        return [c.base_url for c in self._clients]

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for client in self._clients:
            client.close()

    def load_adapter(self, name: str, path: str) -> None:
        """Nothing to send: the replicas resolve `name` from the shared directory on first use. Only
        checks that the registered copy is published there under its name."""
        folder = Path(path)
        if folder.name != name or folder.resolve().parent != self.adapter_dir.resolve():
            raise VLLMError(
                f"adapter {name} is at {folder}, not published in the fleet's adapter directory"
                f" {self.adapter_dir} under its name: the replicas' resolver cannot find it"
            )

    def probe(self, model: str, prompt: str, max_tokens: int = 1) -> ProbeResult:
        """Every replica answers `prompt` greedily through `model`; all answers must be the same."""
        tokens = max(max_tokens, CONSISTENCY_TOKENS)
        futures = [self._pool.submit(c.probe, model, prompt, tokens) for c in self._clients]
        answers: dict[str, ProbeResult] = {}
        refused: dict[str, str] = {}
        unreachable: dict[str, str] = {}
        for client, future in zip(self._clients, futures, strict=True):
            try:
                answers[client.base_url] = future.result()
            except VLLMError as exc:  # status 0: no answer at all (evolvd.connectors.vllm_client)
                (unreachable if exc.status == 0 else refused)[client.base_url] = str(exc)
        if refused:
            listed = "; ".join(f"{url}: {why}" for url, why in refused.items())
            raise ReplicasDisagreeError(
                f"{len(refused)} of {len(self._clients)} replicas cannot serve {model}: {listed}"
            )
        if not answers:
            listed = "; ".join(f"{url}: {why}" for url, why in unreachable.items())
            raise ReplicasDisagreeError(f"no replica answered the probe of {model}: {listed}")
        if unreachable:
            logger.warning(
                "%s: %d of %d replicas did not answer and were not checked (%s); they serve it from %s"
                " when they are back",
                model,
                len(unreachable),
                len(self._clients),
                ", ".join(unreachable),
                self.adapter_dir,
            )
        if len({a.text for a in answers.values()}) > 1:
            listed = "; ".join(f"{url} {a.text!r}" for url, a in answers.items())
            raise ReplicasDisagreeError(f"replicas give different greedy answers with {model}: {listed}")
        return max(answers.values(), key=lambda a: a.latency_s)

    def unload_adapter(self, name: str) -> None:
        """Frees the adapter's slot on every replica that holds it (a replica that never resolved it
        answers 404, which is fine); a later request naming it would resolve it again."""
        for client in self._clients:
            try:
                client.unload_adapter(name)
            except VLLMError as exc:  # 404: never resolved there; status 0: away (a restart drops it)
                if exc.status != 404:
                    logger.warning("could not unload %s from %s: %s", name, client.base_url, exc)
