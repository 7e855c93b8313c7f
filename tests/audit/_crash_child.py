"""A writer process for the crash test: records under concurrent load and reports each acknowledged seq.

Run as ``python -m tests.audit._crash_child DATA_DIR``. Each line on stdout is ``<seq> <hash>``, written only after
``record`` returned (the record is durable). The parent SIGKILLs this process at a random moment.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from appliance.audit import open_audit_log
from appliance.config import load_settings
from appliance.keys import LocalKeyService
from tests.audit.conftest import make_event


async def _main(data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir)
    settings = settings.model_copy(
        update={"audit": settings.audit.model_copy(update={"checkpoint_every": 50, "segment_max_records": 300})}
    )
    log = open_audit_log(settings, LocalKeyService(settings.keystore_path))

    async def worker(n: int) -> None:
        i = 0
        while True:
            receipt = await log.record(make_event(request_id=f"w{n}-{i}"))
            os.write(1, f"{receipt.seq} {receipt.record_hash}\n".encode())
            i += 1

    await asyncio.gather(*(worker(n) for n in range(32)))


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1])))
