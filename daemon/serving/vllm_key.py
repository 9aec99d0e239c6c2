"""The vLLM server's API key: what protects its OpenAI API and its LoRA load/unload endpoints.

vLLM runs with runtime LoRA updating on (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`), so without a key any
process that reaches its port can load an adapter of its choosing and serve it under any name. A
managed server therefore always gets a key (the operator's, or one generated into data_dir), passed
in its environment (`VLLM_API_KEY`) rather than on its command line, where `ps` would show it.
vLLM checks it on every `/v1` route; `/health` and `/metrics` stay open for probes and scrapes.
"""

from __future__ import annotations

import os

from evolvd.config import EvolvdConfig
from evolvd.secret_file import owner_only_secret

GENERATED_KEY_FILE = "vllm.key"


def vllm_api_key(config: EvolvdConfig) -> str | None:
    """The key the daemon sends to vLLM (and starts a managed server with); None: an external server
    without one. Raises SecretFileError when the generated key's file cannot be used."""
    configured = os.environ.get(config.serving.api_key_env) or None
    if configured is not None or config.serving.mode == "external":
        return configured
    return owner_only_secret(config.data_dir / GENERATED_KEY_FILE)
