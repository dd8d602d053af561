# One llm-pool worker process. Dependencies come from the runtime lock only (hash-pinned, no test or
# lint tools); the package itself is installed from a wheel built in a separate stage, not editable.
# Base image pinned to an exact Python patch release and Debian release.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock constraints.txt ./
# The build tools alone (setuptools, wheel and its packaging), with the versions and hashes of the full lock; they stay
# in this stage.
RUN awk '/^[A-Za-z0-9]/ { keep = /^(setuptools|wheel|packaging)==/ } keep' requirements.lock > build-tools.txt \
    && pip install --require-hashes -r build-tools.txt -c constraints.txt
COPY pyproject.toml README.md ./
COPY llm_pool ./llm_pool
COPY worker ./worker
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True LLM_POOL_SETTINGS=/app/settings.toml
WORKDIR /app
COPY requirements-runtime.lock constraints.txt ./
RUN pip install --require-hashes -r requirements-runtime.lock -c constraints.txt
COPY --from=build /wheels /wheels
RUN pip install --no-deps --no-index /wheels/*.whl && rm -rf /wheels
COPY settings.toml Procfile ./
USER nobody
# The Procfile's worker line; exec form, so the worker is PID 1 and gets SIGTERM directly.
CMD ["python", "-m", "worker"]
