# One llm-pool worker process. Dependencies come from the hash-pinned lock only.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 LITELLM_LOCAL_MODEL_COST_MAP=True
WORKDIR /app
COPY requirements.lock constraints.txt ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock -c constraints.txt
COPY pyproject.toml README.md settings.toml Procfile ./
COPY llm_pool ./llm_pool
COPY worker ./worker
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .
USER nobody
# The Procfile's worker line; exec form, so the worker is PID 1 and gets SIGTERM directly.
CMD ["python", "-m", "worker"]
