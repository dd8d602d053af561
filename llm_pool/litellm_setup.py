"""The one place that imports LiteLLM, after pinning the settings it reads at import time: every
other module takes LiteLLM's names from here (an ``import litellm...`` elsewhere, sorted before this
module, would load LiteLLM first and make it try to download its price map).

``LITELLM_LOCAL_MODEL_COST_MAP`` must be set before the import, or every start blocks for seconds
trying to download a price map that this pool never needs (prices ship with the package).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.router import RetryPolicy

litellm.suppress_debug_info = True
litellm.set_verbose = False
# A parameter one provider lacks (say ``seed`` on Anthropic) is dropped, not turned into a failure
# that would send the request to a fallback group.
litellm.drop_params = True

__all__ = ["CustomLogger", "RetryPolicy", "litellm"]
