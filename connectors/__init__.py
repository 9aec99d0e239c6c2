"""Connectors to the outside: the Kafka source and producer, and the embedded broker."""
