"""structlog set-up: JSON lines in production, one shape for our events and for stdlib loggers.

Privacy is enforced here, not only by discipline at call sites: a processor drops any event key
that could carry prompt text or credentials, so ``log.info("x", messages=...)`` cannot leak.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

# Keys that may hold message text, tool arguments or credentials; their values never reach a log.
REDACTED_KEYS = frozenset(
    {
        "messages",
        "content",
        "text",
        "prompt",
        "tools",
        "tool_calls",
        "arguments",
        "api_key",
        "authorization",
        "headers",
        "request",
        "payload",
    }
)

# Third-party loggers that would log job arguments (arq) or request bodies (litellm, httpx).
_QUIET_LOGGERS = {
    "arq": logging.WARNING,
    "arq.worker": logging.WARNING,
    "arq.jobs": logging.WARNING,
    "arq.connections": logging.WARNING,
    "LiteLLM": logging.CRITICAL,
    "LiteLLM Router": logging.CRITICAL,
    "LiteLLM Proxy": logging.CRITICAL,
    "litellm": logging.CRITICAL,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "openai": logging.WARNING,
    "asyncio": logging.WARNING,
}


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of any sensitive key with ``"[redacted]"``."""
    for key in REDACTED_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def configure_logging(fmt: Literal["json", "console"] = "json", level: str = "INFO") -> None:
    """Route structlog and stdlib logging to stderr as JSON lines (or coloured text for people)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, quiet_level in _QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(quiet_level, root.level))
        logger.handlers[:] = []
        logger.propagate = True


class OutageLog:
    """One log line when a dependency goes away and one when it is back, not one per retry."""

    def __init__(
        self, logger: structlog.stdlib.BoundLogger, lost: str, restored: str, level: str = "error"
    ) -> None:
        self._logger = logger
        self._lost = lost
        self._restored = restored
        self._level = level
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            getattr(self._logger, self._level)(self._lost, error=type(exc).__name__)
            self.failing = True

    def succeeded(self) -> None:
        if self.failing:
            self._logger.info(self._restored)
            self.failing = False


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
