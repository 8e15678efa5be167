"""Hand-made state-store rows for tests that need a record but no VM or workspace behind it."""

from __future__ import annotations

import time
from typing import Any


def vm_record(vm_id: str, **fields: Any) -> dict[str, Any]:
    """A `created` VM of debian:12 with the required columns; `fields` override or add."""
    now = time.time()
    return {
        "vm_id": vm_id,
        "environment": "debian:12",
        "environment_version": "1",
        "vcpu_count": 1,
        "mem_mib": 1024,
        "ttl_seconds": 600,
        "created_at": now,
        "expires_at": now + 600,
        "state": "created",
        "execution_mode": "pending",
        "vm_dir": f"/nowhere/{vm_id}",
        **fields,
    }
