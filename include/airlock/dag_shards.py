"""The DAG file in shards, for fleets too big for one file: Airflow stops parsing a file after its
import timeout (30 s by default) and building a target's DAGs costs about 30 ms, so 1,000 targets in
one file fail to load. Copies of the DAG file named `airlock_upgrade_<i>of<n>.py` (i = 1 … n) each
build the DAGs of the targets and fleets whose names fall into their shard; the DAG processor parses
them one by one, each within the timeout, and a worker still builds only its task's DAG.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

SHARD_NAME = re.compile(r"_(\d+)of(\d+)\.py$")


@dataclass(frozen=True)
class Shard:
    index: int = 1
    count: int = 1

    def holds(self, name: str) -> bool:
        """Whether a target's (or fleet's) DAGs are built in this shard: by a stable hash of its name,
        so a target stays in its shard whatever else the targets file holds."""
        return self.count == 1 or zlib.crc32(name.encode()) % self.count == self.index - 1


def shard_of_file(path: str) -> Shard:
    """The shard a DAG file builds, from its name (the whole fleet when its name names none)."""
    found = SHARD_NAME.search(Path(path).name)
    if not found:
        return WHOLE
    index, count = int(found.group(1)), int(found.group(2))
    if not 1 <= index <= count:
        raise ValueError(f"DAG file {path}: shard {index} of {count} does not exist; name the copies "
                         f"airlock_upgrade_1of{count}.py … airlock_upgrade_{count}of{count}.py")
    return Shard(index, count)


WHOLE = Shard()
"""The one shard of a DAG file whose name names none: every target."""
