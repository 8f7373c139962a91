"""What has been ingested: one entry per file with its content hash and passage count.

Written atomically (temporary file + rename). Before a file's passages are touched in
the store, its name goes into ``pending``; it leaves ``pending`` only when its passages
are all written. A run killed in between leaves the name there, and the next run
repairs it: no duplicate, no orphan.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class FileEntry:
    sha256: str
    passages: int
    title: str = ""


@dataclass
class Manifest:
    model_id: str = ""
    chunking: str = ""  # the chunking settings that made the passages
    files: dict[str, FileEntry] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)

    @property
    def passages(self) -> int:
        return sum(e.passages for e in self.files.values())

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                model_id=raw.get("model_id", ""),
                chunking=raw.get("chunking", ""),
                files={k: FileEntry(**v) for k, v in raw.get("files", {}).items()},
                pending=list(raw.get("pending", [])),
            )
        except (ValueError, TypeError, KeyError):
            # An unreadable manifest means "unknown state": start over cleanly.
            return cls(pending=["*"])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        data = {
            "model_id": self.model_id,
            "chunking": self.chunking,
            "files": {k: asdict(v) for k, v in sorted(self.files.items())},
            "pending": self.pending,
        }
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
