"""The `qa` command: ingest, search (and later ask, eval, serve).

Exit codes: 0 success, 1 the operation failed (e.g. store unreachable), 2 bad usage or
configuration, 3 the index is missing or was built with another model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INDEX = 0, 1, 2, 3


def _settings(args):
    from .settings import load_settings

    settings = load_settings(args.config)
    logging.basicConfig(
        level="DEBUG" if args.verbose else settings.log_level,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return settings


def cmd_ingest(args, settings) -> int:
    from .components import Components

    corpus = Path(args.path) if args.path else settings.resolve(settings.corpus_dir)
    comps = Components(settings)
    report = comps.indexer.run(corpus, rebuild=args.rebuild,
                               progress=None if not args.quiet else False)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
    else:
        print(report.summary())
    return EXIT_OK


def cmd_search(args, settings) -> int:
    from .components import Components

    comps = Components(settings)
    if comps.store.count() == 0:
        print("the index is empty: run `qa ingest` first", file=sys.stderr)
        return EXIT_INDEX
    results = comps.retriever.search(args.question, k=args.k, sources=args.doc or None)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=1))
        return EXIT_OK
    for i, r in enumerate(results, 1):
        p = r.passage
        where = " · ".join(x for x in (p.section, f"§ {p.para_no}" if p.para_no else "") if x)
        print(f"{i:>2}. [{r.score:.4f}] {p.title}" + (f" — {where}" if where else ""))
        print(f"    {p.source} ({p.id})")
        text = " ".join(p.text.split())
        print(f"    {text[:300]}{'…' if len(text) > 300 else ''}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qa", description="Offline, citation-grounded question answering over documents."
    )
    parser.add_argument("--config", help="settings file (default: config/settings.yaml or $QA_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="index a folder or file of documents (incremental)")
    p.add_argument("path", nargs="?", help="folder or file (default: corpus_dir from settings)")
    p.add_argument("--rebuild", action="store_true", help="drop the index and start over")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="show the best passages for a question")
    p.add_argument("question")
    p.add_argument("-k", type=int, default=None, help="number of passages (default: retrieval.top_k)")
    p.add_argument("--doc", action="append", metavar="SOURCE",
                   help="only this document (file name as ingested); repeatable")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    args = build_parser().parse_args(argv)
    from .embedder import EmbedderError
    from .settings import SettingsError
    from .store import ModelMismatchError, StoreError

    try:
        settings = _settings(args)
        return args.func(args, settings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INDEX
    except (StoreError, EmbedderError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
