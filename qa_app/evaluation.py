"""`qa eval`: run a question set through the app's own pipeline and score it.

Scoring is eval/score.py itself (standard library only, the reference scorer), loaded
from the project, so the metrics printed here cannot drift from it.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from .service import QAService
from .settings import PROJECT_ROOT

SCORER = PROJECT_ROOT / "eval" / "score.py"


def load_scorer(path: Path = SCORER):
    spec = importlib.util.spec_from_file_location("qa_score", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dataset(path: Path) -> list[dict]:
    questions = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                q = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
            if not {"id", "question"} <= set(q):
                raise ValueError(f"{path}:{n}: needs at least 'id' and 'question'")
            questions.append(q)
    return questions


def _passage_ref(p) -> dict:
    return {"source": p.source, "text": p.text, "id": p.id, "para_no": p.para_no}


def run_eval(service: QAService, dataset: Path, *, mode: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    questions = load_dataset(dataset)
    results, latencies = [], []
    for i, q in enumerate(questions, 1):
        started = time.perf_counter()
        answer = service.ask(q["question"], mode=mode)
        latencies.append(time.perf_counter() - started)
        results.append({
            "id": q["id"],
            "question": q["question"],
            "retrieved": [_passage_ref(sp.passage) for sp in answer.passages],
            "abstained": answer.abstained,
            "mode": answer.mode,
            "answer": answer.text,
            "citations": [_passage_ref(c.passage) for c in answer.citations],
            "timings": {k: round(v, 4) for k, v in answer.timings.items()},
        })
        if progress:
            progress(i, len(questions))
    out = {"dataset": str(dataset), "settings": service.settings.model_dump(mode="json"),
           "results": results}
    gold = [q for q in questions if "evidence" in q and "kind" in q]
    if gold:
        summary, rows = load_scorer().score(gold, results)
        out["summary"], out["rows"] = summary, rows
    if latencies:
        out["latency_s"] = {"median": statistics.median(latencies), "max": max(latencies)}
    return out


def format_summary(summary: dict) -> str:
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}={v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.3f}"
        lines.append(f"{key:28s} {value}")
    return "\n".join(lines)


def print_progress(i: int, n: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{i}/{n} questions", end="" if i < n else "\n", file=sys.stderr, flush=True)
