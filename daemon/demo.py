"""The built-in demo workload (`evolvd run --demo`, what `make run` starts): traffic evolvd makes itself,
so the whole loop can be watched on one machine with nothing else installed.

Two streams, each a thread:
- producer: verifiable prompts (evolvd.workload) published to the prompts topic through Kafka, as an
  application would publish its traffic. Only the prompt is sent; the gold answer stays here.
- users: a trickle of chat requests through the gateway's public model name, so a canary adapter
  has real requests (errors, latency) to be judged on.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator

import httpx

from evolvd.config import EvolvdConfig
from evolvd.connectors.kafka_publisher import KafkaPublisher
from evolvd.workload import Task, mixed

logger = logging.getLogger("evolvd.demo")

# Prompts between two progress lines in the log.
LOG_EVERY = 50


class DemoWorkload:
    name = "demo"

    def __init__(
        self, config: EvolvdConfig, bootstrap_servers: str, gateway_url: Callable[[], str | None]
    ) -> None:
        self._config = config
        self._bootstrap_servers = bootstrap_servers
        self._gateway_url = gateway_url
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.published = 0
        self.requests_answered = 0

    def start(self) -> None:
        demo = self._config.demo
        self._threads = [threading.Thread(target=self._produce, name="evolvd-demo-producer", daemon=True)]
        if demo.gateway_requests_per_minute > 0 and self._config.gateway.enabled:
            self._threads.append(threading.Thread(target=self._users, name="evolvd-demo-users", daemon=True))
        for thread in self._threads:
            thread.start()
        logger.info(
            "demo workload: %.0f prompts/min into %s (at most %d), %.0f gateway requests/min",
            demo.prompts_per_minute,
            self._config.kafka.topic,
            demo.max_prompts,
            demo.gateway_requests_per_minute,
        )

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=15)

    def _tasks(self, stream: int) -> Iterator[Task]:
        demo = self._config.demo
        # Another seed per stream (0: producer, 1: users), so user requests are not the topic's prompts.
        return mixed(demo.max_prompts, list(demo.families), seed=demo.seed * 2 + stream)

    def _produce(self) -> None:
        demo = self._config.demo
        interval = 60.0 / demo.prompts_per_minute
        producer = KafkaPublisher(self._config.kafka, self._bootstrap_servers, self._config.kafka.topic)
        try:
            for n, task in enumerate(self._tasks(0)):
                if self._stop.wait(interval if n else 0.0):
                    break
                message = {"id": f"demo-{demo.seed}-{n:06d}", "prompt": task.prompt,
                           "metadata": {"source": "demo", "family": task.family}}  # fmt: skip
                producer.publish(json.dumps(message).encode(), None)
                self.published = n + 1
                if self.published % LOG_EVERY == 0:
                    logger.info("demo workload: %d prompts published", self.published)
            producer.flush(timeout_s=10)
        except Exception:
            logger.exception("demo producer stopped")
        finally:
            producer.close(timeout_s=10)
        if not self._stop.is_set():
            logger.info("demo workload: all %d prompts published (demo.max_prompts)", self.published)

    def _users(self) -> None:
        interval = 60.0 / self._config.demo.gateway_requests_per_minute
        keys = self._config.gateway.api_keys()
        headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
        with httpx.Client(timeout=self._config.gateway.request_timeout_s, headers=headers) as http:
            for task in self._tasks(1):
                if self._stop.wait(interval):
                    return
                url = self._gateway_url()
                if url is None:
                    continue
                body = {
                    "model": self._config.gateway.public_model_name,
                    "messages": [{"role": "user", "content": task.prompt}],
                    "max_tokens": 64,
                    "temperature": 0,
                }
                try:
                    response = http.post(url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    logger.debug("demo request failed: %s", exc)
                    continue
                if response.status_code == 200:
                    self.requests_answered += 1
                else:  # 503 while serving restarts: the gateway's own metrics count it
                    logger.debug("demo request answered %d", response.status_code)
