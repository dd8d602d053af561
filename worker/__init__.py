"""The arq worker process of llm-pool: ``python -m worker``."""
