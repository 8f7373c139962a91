"""Concurrent sessions against the running web app: throughput, latency, session isolation.

    python bench/load.py [--url http://127.0.0.1:7860/] [--sessions 20] [--questions 3]
                         [--mode extractive] [--timeout 120] [--json]

Each session is its own gradio_client Client (its own Gradio session), holds a multi-turn
conversation through the app's ``/chat`` endpoint (the history it gets back is what it sends
with its next question, as the browser does) and puts a unique marker in its questions.
The script reports questions per second over the whole run and the p50/p95 latency of one
question, and checks that no history leaked between sessions: every history a session gets
back holds its own questions, in order, and no other session's marker.

Bounded on purpose: loopback URLs only (it never loads another machine), at most 200
sessions and 10 questions each, and every question has a timeout. Exit code 0 when every
question was answered and nothing leaked, 1 otherwise. Start the app first (``qa serve``);
extractive mode needs no LLM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MAX_SESSIONS = 200
MAX_QUESTIONS = 10
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Follow-ups that make sense after any first question, so the conversation is multi-turn.
FIRST = [
    "Quand la Thaïlande a-t-elle adhéré à la CICA ?",
    "Que dit l'Acte d'Almaty sur la menace du terrorisme ?",
    "Quelle question énergétique la déclaration de 2006 juge-t-elle prioritaire ?",
    "Which countries are members of the CICA?",
    "Que décident les dirigeants au sujet des mesures de confiance ?",
]
FOLLOW = [
    "Et quelles mesures sont prévues ensuite ?",
    "Dans quel document est-ce écrit ?",
    "What else does that passage say?",
    "Qui a signé ce texte ?",
]
_MARK = re.compile(r"zq[0-9a-f]{6}s\d{3}")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[k - 1]


def _text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return json.dumps(content, ensure_ascii=False)


def session_questions(run_id: str, index: int, count: int) -> tuple[str, list[str]]:
    marker = f"zq{run_id}s{index:03d}"
    questions = [FIRST[index % len(FIRST)]] + [FOLLOW[(index + i) % len(FOLLOW)]
                                                for i in range(count - 1)]
    return marker, [f"{q} (réf. {marker})" for q in questions]


def check_history(history: list[dict], marker: str, asked: list[str]) -> list[str]:
    """Problems with one session's history after it asked ``asked`` (empty list: fine)."""
    problems = []
    users = [_text(m) for m in history if m.get("role") == "user"]
    answers = [m for m in history if m.get("role") == "assistant"]
    if len(users) != len(asked) or len(answers) != len(asked):
        problems.append(f"{marker}: {len(users)} questions and {len(answers)} answers in the "
                        f"history after asking {len(asked)}")
    for i, (shown, question) in enumerate(zip(users, asked)):
        if marker not in shown:
            problems.append(f"{marker}: question {i + 1} of the history is not its own")
    others = {m for m in _MARK.findall(" ".join(_text(m) for m in history)) if m != marker}
    if others:
        problems.append(f"{marker}: history holds other sessions' markers {sorted(others)}")
    return problems


def run_session(url: str, index: int, run_id: str, questions: int, mode: str, k: int,
                timeout: float, start: threading.Barrier | None) -> dict:
    from gradio_client import Client

    marker, asked = session_questions(run_id, index, questions)
    out = {"marker": marker, "latencies": [], "answered": 0, "problems": [], "errors": []}
    try:
        client = Client(url, verbose=False, download_files=False)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        out["errors"].append(f"{marker}: cannot connect: {exc}")
        if start is not None:
            start.abort()
        return out
    if start is not None:
        try:
            start.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            pass
    history: list[dict] = []
    for n, question in enumerate(asked):
        began = time.perf_counter()
        try:
            job = client.submit(question, history, mode, k, [], api_name="/chat")
            history, _sources, _cleared = job.result(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - a failed question is counted, not raised
            out["errors"].append(f"{marker}: question {n + 1}: {type(exc).__name__}: {exc}")
            break
        out["latencies"].append(time.perf_counter() - began)
        last = _text(history[-1]) if history else ""
        if "qa-answer" in last and "The answer failed" not in last \
                and "The index is unavailable" not in last:
            out["answered"] += 1
        else:
            out["errors"].append(f"{marker}: question {n + 1} got no answer: {last[:200]}")
        out["problems"] += check_history(history, marker, asked[: n + 1])
    try:
        client.close()
    except Exception:  # noqa: BLE001 - older clients have no close()
        pass
    return out


def run_load(url: str = "http://127.0.0.1:7860/", sessions: int = 20, questions: int = 3,
             mode: str = "extractive", k: int = 5, timeout: float = 120.0) -> dict:
    """Run the load and return its figures (see the module docstring)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"bench/load.py only loads an app on this machine, not {host!r}")
    if not 1 <= sessions <= MAX_SESSIONS or not 1 <= questions <= MAX_QUESTIONS:
        raise ValueError(f"sessions must be 1..{MAX_SESSIONS}, questions 1..{MAX_QUESTIONS}")
    run_id = uuid.uuid4().hex[:6]
    start = threading.Barrier(sessions)  # every client connected before the clock starts
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=sessions) as pool:
        futures = [pool.submit(run_session, url, i, run_id, questions, mode, k, timeout, start)
                   for i in range(sessions)]
        results = [f.result() for f in futures]
    wall = time.perf_counter() - began
    latencies = [x for r in results for x in r["latencies"]]
    first = min((min(r["latencies"]) for r in results if r["latencies"]), default=0.0)
    answered = sum(r["answered"] for r in results)
    return {
        "url": url, "mode": mode, "sessions": sessions, "questions_per_session": questions,
        "asked": sessions * questions, "answered": answered,
        "seconds": round(wall, 2),
        "throughput_qps": round(answered / wall, 3) if wall else 0.0,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 95), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "fastest_s": round(first, 3),
        "leaks": [p for r in results for p in r["problems"]],
        "errors": [e for r in results for e in r["errors"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--questions", type=int, default=3, help="questions per session")
    parser.add_argument("--mode", default="extractive", choices=["extractive", "auto", "llm"])
    parser.add_argument("-k", type=int, default=5, help="passages retrieved per question")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per question")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        out = run_load(args.url, args.sessions, args.questions, args.mode, args.k, args.timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
    else:
        print(f"{out['sessions']} sessions × {out['questions_per_session']} questions "
              f"({out['mode']}) against {out['url']}")
        print(f"answered {out['answered']}/{out['asked']} in {out['seconds']} s: "
              f"{out['throughput_qps']} questions/s")
        print(f"latency per question: p50 {out['latency_p50_s']} s, p95 {out['latency_p95_s']} s,"
              f" max {out['latency_max_s']} s")
        print(f"history leaks between sessions: {len(out['leaks'])}")
        for line in out["leaks"][:10] + out["errors"][:10]:
            print(f"  {line}")
    ok = out["answered"] == out["asked"] and not out["leaks"] and not out["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
