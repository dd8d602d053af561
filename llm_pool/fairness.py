"""The fair-share index: waiting jobs by tenant, beside arq's first-in first-out queue.

arq's queue (``P:queue``) stays the record of every job, so plain arq callers and ``Job.status()``
keep working. Beside it, under ``P:fair:``, the pool indexes each waiting job by its tenant:

- ``P:fair:jobs``: hash, job id -> tenant, for every indexed (waiting, unclaimed) job;
- ``P:fair:q:{tenant}``: sorted set of that tenant's waiting job ids, scored like the queue;
- ``P:fair:tenants``: sorted set of tenants with waiting jobs, scored by their turn: a tenant
  served (or newly arrived) gets the next number from ``P:fair:turn``, so tenants take turns;
- ``P:fair:running:{tenant}``: the tenant's claimed job ids, kept only while it has a cap;
- ``P:fair:sweep`` and ``P:fair:sweep-at``: the lock and cursor of the sweep that indexes jobs
  the index has not seen (enqueued by plain arq, or back in the queue after a worker died).

The pool's client indexes its jobs as it enqueues them; workers index the rest (``worker/claim.py``).
``FAIR_ADD_LUA`` is the one Lua function both scripts use to add a job to the index.
"""

from __future__ import annotations

import re
from importlib.resources import files

# The tenant a job is indexed under when its envelope or tenant id cannot be read: such a job is
# still claimed (in its own turn) and the worker answers it with invalid_request.
UNREADABLE_TENANT = ""

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def index_tenant(tenant_id: str) -> str:
    """The tenant a job is indexed under: the canonical UUID string, as the Lua side computes it."""
    raw = re.sub(r"[{}\-]", "", tenant_id.lower())
    if not _HEX32.match(raw):
        return UNREADABLE_TENANT
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


# fair_add(index, id, score, tenant): the one Lua function that indexes a waiting job.
FAIR_ADD_LUA = (files("llm_pool") / "fair_add.lua").read_text(encoding="utf-8")
