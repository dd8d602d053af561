"""The worker process of llm-pool (its own loop over arq's queue format): ``python -m worker``."""
