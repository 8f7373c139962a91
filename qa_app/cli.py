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
    configure_logging("DEBUG" if args.verbose else settings.log_level)
    return settings


def configure_logging(level: str) -> None:
    """Quiet by default. The level is set on the handler too: some libraries (bm25s)
    set their own loggers to DEBUG, which a root-logger level alone does not stop."""
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def cmd_ingest(args, settings) -> int:
    from .components import Components

    from ingest.indexer import default_roots

    corpus = [Path(args.path)] if args.path else default_roots(settings)
    if not corpus:
        print(f"error: the corpus folder {settings.corpus_dir} does not exist", file=sys.stderr)
        return EXIT_USAGE
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
    results = comps.retriever.search(args.question, k=args.k, sources=args.doc or None,
                                     sections=args.section or None)
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


def _print_sources(answer) -> None:
    if not answer.citations:
        return
    print("\nSources:")
    for c in answer.citations:
        p = c.passage
        where = " · ".join(x for x in (p.section, f"§ {p.para_no}" if p.para_no else "") if x)
        flag = " (inferred)" if c.inferred else ""
        print(f"[{c.marker}] {p.title}" + (f" — {where}" if where else "") + f"{flag}  ({p.id})")
        print(f"    « {' '.join(c.support.split())} »")


def cmd_ask(args, settings) -> int:
    from .answering import Done, Token
    from .service import QAService, clean_question

    if not clean_question(args.question):  # before loading anything
        print("error: the question is empty: type a question, e.g. qa ask \"Quand la "
              "Thaïlande a-t-elle adhéré à la CICA ?\"", file=sys.stderr)
        return EXIT_USAGE
    service = QAService(settings)
    if service.store.count() == 0:
        print("the index is empty: run `qa ingest` first", file=sys.stderr)
        return EXIT_INDEX
    mode = "extractive" if args.no_llm else None
    try:
        events = service.ask_stream(args.question, mode=mode, k=args.k, sources=args.doc or None,
                                    sections=args.section or None)
        answer = None
        for event in events:
            if isinstance(event, Token) and not args.json:
                print(event.text, end="", flush=True)
            elif isinstance(event, Done):
                answer = event.answer
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=1))
        return EXIT_OK
    if answer.mode != "generated":
        print(answer.text, end="")  # extractive and abstained answers arrive whole
    print()
    if answer.notice:
        print(f"({answer.notice})")
    _print_sources(answer)
    return EXIT_OK


def cmd_eval(args, settings) -> int:
    from .evaluation import format_summary, print_progress, run_eval
    from .service import QAService

    dataset = Path(args.dataset)
    if not dataset.is_file():
        print(f"error: no such dataset: {dataset}", file=sys.stderr)
        return EXIT_USAGE
    service = QAService(settings)
    if service.store.count() == 0:
        print("the index is empty: run `qa ingest` first", file=sys.stderr)
        return EXIT_INDEX
    try:
        out = run_eval(service, dataset, mode="extractive" if args.no_llm else None,
                       progress=print_progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    Path(args.output).write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")
    if "summary" in out:
        print(format_summary(out["summary"]))
    print(f"wrote {args.output}")
    return EXIT_OK


def cmd_serve(args, settings) -> int:
    """Bring the index of corpus_dir up to date (with progress), then start the web app."""
    from ingest.indexer import default_roots

    from .app import _auth, launch
    from .service import QAService

    if args.host:
        settings.app.host = args.host
    if args.port:
        settings.app.port = args.port
    try:
        _auth(settings, settings.app.host)  # refuse an open address without a login, early
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    service = QAService(settings)
    roots = default_roots(settings)
    if roots:
        print(f"checking the index of {', '.join(map(str, roots))} "
              f"(new or changed files are indexed first)…", file=sys.stderr, flush=True)
        report = service.ingest(roots, progress=not args.quiet)
        print(report.summary(), file=sys.stderr, flush=True)
    elif service.store.count() == 0:
        print(f"error: the corpus folder {settings.corpus_dir} does not exist and the index is "
              f"empty; set corpus_dir in {settings.source} or run from the project folder",
              file=sys.stderr)
        return EXIT_FAIL
    else:
        print(f"warning: the corpus folder {settings.corpus_dir} does not exist; serving the "
              f"existing index", file=sys.stderr)
    host, port = settings.app.host, settings.app.port
    print(f"starting the app at http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port} "
          f"(Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        launch(settings, service, quiet=args.quiet, inbrowser=args.open)
    except ValueError as exc:  # e.g. a non-loopback address without a login
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot start the app on {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_FAIL
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
    p.add_argument("--section", action="append", metavar="HEADING",
                   help="only passages under this heading path or a parent of it, e.g. "
                        "'Annexe' or 'Annexe > II. Coopération'; repeatable")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="index corpus_dir if needed, then start the web app")
    p.add_argument("--host", help="bind address (default: app.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: app.port, 7860)")
    p.add_argument("--open", action="store_true", help="open the app in a browser")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ask", help="answer a question with cited passages")
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    p.add_argument("--no-llm", action="store_true", help="extractive answer, no language model")
    p.add_argument("-k", type=int, default=None, help="passages retrieved (default: retrieval.top_k)")
    p.add_argument("--doc", action="append", metavar="SOURCE",
                   help="only this document (file name as ingested); repeatable")
    p.add_argument("--section", action="append", metavar="HEADING",
                   help="only passages under this heading path or a parent of it, e.g. "
                        "'Annexe' or 'Annexe > II. Coopération'; repeatable")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("eval", help="run a question set through the pipeline and score it")
    p.add_argument("--dataset", default=str(Path("eval") / "dev.jsonl"),
                   help="JSONL questions (default: eval/dev.jsonl)")
    p.add_argument("--output", default="eval-results.json", help="results JSON to write")
    p.add_argument("--no-llm", action="store_true", help="extractive answers only")
    p.set_defaults(func=cmd_eval)
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
    except OSError as exc:  # e.g. a full disk or a read-only folder outside the index
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
