"""Offline guarantee: `qa ingest`, `qa search`, `qa ask --no-llm`, `qa eval` and `qa serve` run
with every non-loopback connection refused, and none of them even tries one (no model hub, no
telemetry, no update check, no web font), nor waits on one.

The guard is a ``sitecustomize.py`` put first on PYTHONPATH of each subprocess: it wraps
``socket.socket.connect``/``connect_ex``, ``socket.create_connection`` and
``socket.getaddrinfo`` so that any address other than 127.0.0.0/8, ::1, ``localhost`` or a unix
socket fails at once (as a refused connection, or a name that does not resolve) and is written
to a log file with the stack that asked for it. The subprocesses run without the
HF_HUB_OFFLINE / telemetry variables that conftest.py sets for the test process itself: the
`qa` command must be offline-safe on its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, _free_port

pytestmark = pytest.mark.slow

GUARD = r'''
"""Test guard (tests/test_offline.py): refuse and log every non-loopback connection."""
import errno as _errno
import ipaddress as _ipaddress
import os as _os
import socket as _socket
import traceback as _traceback

_LOG = _os.environ.get("QA_NET_GUARD_LOG", "")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _local_host(host):
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard, for bind()
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%", 1)[0]
    if host.lower() in _LOCAL_NAMES or host == "":
        return True
    try:
        ip = _ipaddress.ip_address(host)
    except ValueError:
        return False  # any other name: resolving it is already an outbound attempt
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _allowed(family, address):
    if family == getattr(_socket, "AF_UNIX", object()) or isinstance(address, (str, bytes)):
        return True
    if isinstance(address, tuple) and address:
        return _local_host(address[0])
    return False


def _record(what, address):
    if _LOG:
        stack = "".join(_traceback.format_stack(limit=12)[:-2])
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"--- pid {_os.getpid()} {what} {address!r}\n{stack}")


_connect = _socket.socket.connect
_connect_ex = _socket.socket.connect_ex
_create_connection = _socket.create_connection
_getaddrinfo = _socket.getaddrinfo


def connect(self, address):
    if not _allowed(self.family, address):
        _record("connect", address)
        raise ConnectionRefusedError(_errno.ECONNREFUSED, f"offline guard: {address!r}")
    return _connect(self, address)


def connect_ex(self, address):
    if not _allowed(self.family, address):
        _record("connect_ex", address)
        return _errno.ECONNREFUSED
    return _connect_ex(self, address)


def create_connection(address, *args, **kwargs):
    if not (isinstance(address, tuple) and address and _local_host(address[0])):
        _record("create_connection", address)
        raise ConnectionRefusedError(_errno.ECONNREFUSED, f"offline guard: {address!r}")
    return _create_connection(address, *args, **kwargs)


def getaddrinfo(host, *args, **kwargs):
    if not _local_host(host):
        _record("getaddrinfo", host)
        raise _socket.gaierror(_socket.EAI_NONAME, f"offline guard: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


_socket.socket.connect = connect
_socket.socket.connect_ex = connect_ex
_socket.create_connection = create_connection
_socket.getaddrinfo = getaddrinfo
if _os.environ.get("QA_NET_GUARD_LOADED"):
    with open(_os.environ["QA_NET_GUARD_LOADED"], "a", encoding="utf-8") as _f:
        _f.write(f"{_os.getpid()}\n")
'''

DOCS = {
    "rapport_eau.txt": (
        "Rapport sur la gestion de l'eau dans la vallée du Verdon\n\n"
        "1. Le syndicat intercommunal a adopté en mars 2021 un plan de sobriété qui réduit de "
        "quinze pour cent les prélèvements agricoles pendant les mois d'été.\n\n"
        "2. Les communes riveraines financent ensemble une station de mesure installée à "
        "Castellane, qui publie chaque jour le débit de la rivière.\n\n"
        "3. Le comité de suivi se réunit deux fois par an et rend compte de ses travaux au "
        "conseil départemental.\n"
    ),
    "note_bibliotheque.txt": (
        "Note sur le réseau des bibliothèques municipales\n\n"
        "1. La médiathèque centrale ouvre désormais le dimanche de dix heures à dix-huit "
        "heures, grâce au recrutement de quatre agents supplémentaires.\n\n"
        "2. Le fonds patrimonial, qui compte douze mille manuscrits, sera numérisé d'ici à "
        "2026 avec le concours de la région.\n\n"
        "3. Les lecteurs peuvent emprunter jusqu'à quinze documents pour une durée de quatre "
        "semaines.\n"
    ),
    "compte_rendu_conseil.txt": (
        "Compte rendu du conseil d'école du 12 octobre\n\n"
        "Le conseil a approuvé la sortie scolaire au musée de la préhistoire de Quinson, prévue "
        "au printemps pour les classes de cours moyen.\n\n"
        "La directrice a rappelé que la cantine servira un repas végétarien chaque jeudi à "
        "partir du mois de novembre.\n"
    ),
}

QUESTIONS = [
    {"id": "off-1", "question": "Où est installée la station de mesure du débit de la rivière ?",
     "lang": "fr", "kind": "lookup", "answer": "À Castellane.",
     "evidence": [{"doc": "rapport_eau.txt",
                   "quote": "une station de mesure installée à Castellane"}]},
    {"id": "off-2", "question": "Combien de manuscrits compte le fonds patrimonial ?",
     "lang": "fr", "kind": "lookup", "answer": "Douze mille.",
     "evidence": [{"doc": "note_bibliotheque.txt",
                   "quote": "Le fonds patrimonial, qui compte douze mille manuscrits"}]},
    {"id": "off-3", "question": "Quel est le score du match de rugby de dimanche ?",
     "lang": "fr", "kind": "unanswerable", "answer": "", "evidence": []},
]

# Variables that would make a library offline by themselves; removed from the subprocesses so
# that what is tested is the `qa` command's own behaviour.
OFFLINE_HINTS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                 "ANONYMIZED_TELEMETRY", "GRADIO_ANALYTICS_ENABLED", "DO_NOT_TRACK")


def _qa_command() -> list[str]:
    script = Path(sys.executable).parent / "qa"
    return [str(script)] if script.exists() else [sys.executable, "-m", "qa_app.cli"]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offline")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    guard_dir = tmp / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    log = tmp / "outbound.log"
    loaded = tmp / "guard-loaded.log"  # one pid a line: each guarded process that ran the guard

    def env(guarded: bool = True, **extra: str) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items()
             if k not in OFFLINE_HINTS and not k.startswith("QA_")}
        e.update(QA_DATA_DIR=str(tmp / "data"), QA_CORPUS_DIR=str(corpus),
                 PYTHONUNBUFFERED="1")
        if guarded:
            e["PYTHONPATH"] = os.pathsep.join(
                [str(guard_dir)] + [p for p in [os.environ.get("PYTHONPATH", "")] if p])
            e["QA_NET_GUARD_LOG"] = str(log)
            e["QA_NET_GUARD_LOADED"] = str(loaded)
        e.update(extra)
        return e

    def run(*args: str, guarded: bool = True, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
        started = time.perf_counter()
        proc = subprocess.run(_qa_command() + list(args), cwd=tmp, env=env(guarded),
                              capture_output=True, text=True, timeout=timeout)
        elapsed = time.perf_counter() - started
        assert proc.returncode == 0, (
            f"qa {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-3000:]}")
        return proc, elapsed

    def outbound() -> str:
        return log.read_text(encoding="utf-8") if log.exists() else ""

    from types import SimpleNamespace

    def guarded_pids() -> int:
        return len(loaded.read_text().split()) if loaded.exists() else 0

    return SimpleNamespace(tmp=tmp, corpus=corpus, log=log, env=env, run=run, outbound=outbound,
                           guarded_pids=guarded_pids)


def test_guard_refuses_and_logs_outbound_but_allows_loopback(offline):
    """The guard itself works: a public address and a host name fail at once and are logged,
    loopback is let through (to a closed port here: refused by the kernel, not logged)."""
    probe = offline.tmp / "probe.log"
    # Nothing is attempted unless the guard is in place (checked first): even a broken guard
    # sends no packet out. 192.0.2.1 is a documentation address (TEST-NET-1).
    code = (
        "import socket, sys, time\n"
        "if socket.socket.connect.__module__ != 'sitecustomize':\n"
        "    sys.exit('the guard is not installed')\n"
        "t = time.perf_counter()\n"
        "for target in [('192.0.2.1', 443), ('huggingface.co', 443)]:\n"
        "    try:\n"
        "        socket.create_connection(target, timeout=30)\n"
        "    except OSError as exc:\n"
        "        print('refused', target[0], type(exc).__name__)\n"
        "s = socket.socket()\n"
        "print('connect_ex', s.connect_ex(('192.0.2.2', 53)))\n"
        "try:\n"
        "    socket.getaddrinfo('pypi.org', 443)\n"
        "except socket.gaierror:\n"
        "    print('no lookup')\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=5)\n"
        "except ConnectionRefusedError:\n"
        "    print('loopback refused by the kernel')\n"
        "print('elapsed', time.perf_counter() - t)\n"
    )
    env = offline.env(QA_NET_GUARD_LOG=str(probe))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("refused ") for line in lines) == 2, out.stdout
    assert "connect_ex 111" in lines and "no lookup" in lines
    assert "loopback refused by the kernel" in out.stdout
    assert float(out.stdout.rsplit("elapsed", 1)[1]) < 2.0
    logged = probe.read_text(encoding="utf-8")
    for target in ("192.0.2.1", "huggingface.co", "192.0.2.2", "pypi.org"):
        assert target in logged
    assert "127.0.0.1" not in logged


def test_cli_runs_offline_without_trying_the_network(offline):
    before = offline.guarded_pids()
    proc, _ = offline.run("ingest", str(offline.corpus), "--json", "-q")
    assert offline.guarded_pids() == before + 1, "the guard did not load in `qa`"
    report = json.loads(proc.stdout)
    assert report, proc.stdout

    question = "Où est installée la station de mesure du débit de la rivière ?"
    # Guarded, then unguarded (only once the guarded run showed it tries nothing; the second
    # run has the warmer caches, which only makes the comparison stricter): the guard must
    # cost nothing, i.e. nothing waits on a refused connection or a failed name lookup.
    proc, guarded_s = offline.run("search", question, "-k", "3")
    assert offline.outbound() == "", "outbound connection attempts:\n" + offline.outbound()
    plain, plain_s = offline.run("search", question, "-k", "3", guarded=False)
    print(f"qa search: {plain_s:.2f} s unguarded, {guarded_s:.2f} s guarded")
    assert "rapport_eau.txt" in proc.stdout and proc.stdout == plain.stdout
    assert guarded_s <= 2 * plain_s + 2.0, (guarded_s, plain_s)

    proc, _ = offline.run("ask", question, "--no-llm", "--json")
    answer = json.loads(proc.stdout)
    assert answer["mode"] == "extractive" and "Castellane" in answer["text"]

    dataset = offline.tmp / "subset.jsonl"
    dataset.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS),
                       encoding="utf-8")
    results = offline.tmp / "eval-results.json"
    proc, _ = offline.run("eval", "--dataset", str(dataset), "--output", str(results),
                          "--no-llm")
    out = json.loads(results.read_text(encoding="utf-8"))
    assert [r["id"] for r in out["results"]] == ["off-1", "off-2", "off-3"]
    assert "summary" in out

    assert offline.outbound() == "", "outbound connection attempts:\n" + offline.outbound()


def _get(url: str, timeout: float = 10) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    with opener.open(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode("utf-8", "replace")


# What a browser loads by itself: scripts, styles, images, frames and CSS url()/@import.
_LOADED = re.compile(
    r"""<(?:script|link|img|iframe|source|video|audio)\b[^>]*?\b(?:src|href)\s*=\s*["']"""
    r"""(?:https?:)?//([^/"'\s:]+)|url\(\s*["']?(?:https?:)?//([^/"'\s:)]+)"""
    r"""|@import\s+["'](?:https?:)?//([^/"'\s:]+)""", re.IGNORECASE)


def _outside_hosts(text: str) -> list[str]:
    hosts = {h for groups in _LOADED.findall(text) for h in groups if h}
    return sorted(hosts - {"127.0.0.1", "localhost"})


def test_web_app_runs_offline_without_trying_the_network(offline):
    if not (ROOT / "qa_app" / "app.py").exists():
        pytest.fail("qa_app/app.py is missing: `qa serve` cannot be tested")
    # The index is built here too, so this test also runs alone.
    offline.run("ingest", str(offline.corpus), "-q")
    port = _free_port()
    server_log = offline.tmp / "serve.log"
    with open(server_log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(_qa_command() + ["serve", "-q"], cwd=offline.tmp,
                                env=offline.env(QA_APP__PORT=str(port)), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        html = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"`qa serve` exited {proc.returncode}:\n"
                            + server_log.read_text(encoding="utf-8")[-3000:])
            try:
                status, html = _get(url, timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("`qa serve` did not answer within 240 s:\n"
                        + server_log.read_text(encoding="utf-8")[-3000:])
        assert "<html" in html.lower()
        # Nothing the page itself points at lives outside this machine (fonts, scripts, CSS).
        assert not _outside_hosts(html), f"the page loads from {_outside_hosts(html)}"
        status, css = _get(url + "theme.css")
        assert status == 200 and not _outside_hosts(css), f"theme.css: {_outside_hosts(css)}"

        from gradio_client import Client

        client = Client(url, verbose=False, download_files=False)
        results = client.predict("station de mesure du débit", 3, "", api_name="/search_json")
        assert results and results[0]["source"].endswith("rapport_eau.txt"), results
        answer = client.predict("Combien de manuscrits compte le fonds patrimonial ?",
                                "extractive", 0, [], api_name="/ask_json")
        assert answer["mode"] == "extractive" and "douze mille" in answer["text"].lower()
        time.sleep(1.0)  # let any background thread started by a request show itself
        assert proc.poll() is None, "the app stopped while serving"
        assert str(proc.pid) in (offline.tmp / "guard-loaded.log").read_text().split()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    assert offline.outbound() == "", "outbound connection attempts:\n" + offline.outbound()
