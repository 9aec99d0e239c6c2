"""Serving: the supervised vLLM process, the adapter registry and hot-swap, the gateway."""
