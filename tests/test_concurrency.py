"""Concurrent sessions against the real app (bench/load.py), and the bounded request queue."""

from __future__ import annotations

import sys
import threading

import pytest

from conftest import ROOT
from tests.llm_server import FakeOpenAIServer
from tests.small_corpus import free_port

sys.path.insert(0, str(ROOT / "bench"))
import load  # noqa: E402  (bench/load.py)

pytestmark = pytest.mark.slow


def test_history_check_catches_a_leak():
    """The leak check itself: another session's question in a history is reported."""
    mine, asked = load.session_questions("abc123", 1, 2)
    theirs, other = load.session_questions("abc123", 2, 1)
    history = [{"role": "user", "content": asked[0]}, {"role": "assistant", "content": "a"},
               {"role": "user", "content": other[0]}, {"role": "assistant", "content": "b"}]
    problems = load.check_history(history, mine, asked)
    assert any("not its own" in p for p in problems)
    assert any(theirs in p for p in problems)
    assert load.check_history(history[:2], mine, asked[:1]) == []
    with pytest.raises(ValueError, match="on this machine"):
        load.run_load("http://10.0.0.1:7860/", sessions=1, questions=1)
    assert load.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == 10
    assert load.percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_concurrent_sessions_are_all_answered_without_leaks(app_server):
    out = load.run_load(app_server.url, sessions=8, questions=2, mode="extractive",
                        timeout=240)
    print(f"\nload: {out['answered']}/{out['asked']} answered in {out['seconds']} s, "
          f"{out['throughput_qps']} questions/s, p50 {out['latency_p50_s']} s, "
          f"p95 {out['latency_p95_s']} s")
    assert out["errors"] == [] and out["leaks"] == []
    assert out["answered"] == out["asked"] == 16
    assert out["throughput_qps"] > 0 and out["latency_p95_s"] < 240


def test_the_app_queue_is_bounded(app_server):
    """The running app reports the queue bounds of its settings; an app with a tiny queue
    refuses the excess at once ("queue is full") and keeps answering the rest."""
    from gradio_client import Client

    from qa_app.app import launch
    from qa_app.components import Components
    from qa_app.service import QAService

    client = Client(app_server.url, verbose=False, download_files=False)
    queue = client.predict(api_name="/status_json")["queue"]
    assert queue == {"max_size": app_server.settings.app.max_queue,
                     "concurrency": app_server.settings.app.concurrency}
    assert queue["max_size"] and queue["concurrency"]

    # A slow LLM (2 s an answer) behind an app allowing 1 answer at a time and 2 waiting.
    answer = "La Thaïlande a adhéré à la CICA [1]. " + "Détail. " * 9
    with FakeOpenAIServer(answer, token_delay=0.15) as fake:
        settings = app_server.settings.model_copy(deep=True)
        settings.llm.base_url, settings.llm.model = fake.url, "fake-model"
        settings.app.concurrency, settings.app.max_queue = 1, 2
        base = app_server.service.components
        service = QAService(settings, Components(settings, embedder=base.embedder,
                                                 store=base.store))
        demo, url = launch(settings, service, host="127.0.0.1", port=free_port(), block=False,
                           quiet=True)
        try:
            clients = [Client(url, verbose=False, download_files=False) for _ in range(8)]
            results: list[object] = [None] * len(clients)
            go = threading.Barrier(len(clients))

            def ask(i: int) -> None:
                go.wait(timeout=60)
                try:
                    job = clients[i].submit("Quand la Thaïlande a-t-elle adhéré à la CICA ?",
                                            "llm", 5, [], api_name="/ask_json")
                    results[i] = job.result(timeout=120)
                except Exception as exc:  # noqa: BLE001
                    results[i] = exc

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(clients))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=180)
            answered = [r for r in results if isinstance(r, dict)]
            refused = [r for r in results if isinstance(r, Exception)]
            assert answered and all(r["mode"] == "generated" for r in answered)
            assert refused, "a queue of 2 accepted 8 simultaneous requests"
            assert all("queue is full" in str(r).lower() for r in refused), refused
            assert len(answered) <= 1 + 2 + 2  # running + waiting (+ slack for timing)
            # Still up: the next question is answered.
            after = Client(url, verbose=False, download_files=False).predict(
                "Quand la Thaïlande a-t-elle adhéré à la CICA ?", "extractive", 5, [],
                api_name="/ask_json")
            assert after["mode"] == "extractive"
        finally:
            demo.close()
