"""Service settings: environment prefix, REDIS_URL alias, cross-field rule, cached getter."""

import pytest
from pydantic import ValidationError

from rtnstream.service.settings import ServiceSettings, get_settings


def test_environment_and_redis_url_alias(monkeypatch, tmp_path):
    monkeypatch.setenv("RTNSTREAM_PORT", "9123")
    monkeypatch.setenv("RTNSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://db:6379/0")
    monkeypatch.setenv("RTNSTREAM_TOKEN", "t")
    s = ServiceSettings()
    assert (s.port, s.data_dir, s.redis_url, s.token.get_secret_value()) == (9123, tmp_path, "redis://db:6379/0",
                                                                             "t")
    assert s.cube_dir == tmp_path / "cubes"
    monkeypatch.setenv("RTNSTREAM_REDIS_URL", "redis://other:6379/1")
    assert ServiceSettings().redis_url == "redis://other:6379/1"
    assert ServiceSettings(redis_url="redis://arg").redis_url == "redis://arg"


def test_invalid_settings_name_the_field(monkeypatch, tmp_path):
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ValidationError, match="port"):
        ServiceSettings(port=70000)
    with pytest.raises(ValidationError, match="backend"):
        ServiceSettings(backend="opencl")
    with pytest.raises(ValidationError, match="redis_url .* or redis_db_file"):
        ServiceSettings(redis_url="redis://x", redis_db_file=tmp_path / "r.db")
    assert ServiceSettings(token="").token is None
    assert ServiceSettings(data_dir=tmp_path).embedded_db_file == tmp_path / "redis.db"


def test_get_settings_is_cached():
    get_settings.cache_clear()
    assert get_settings() is get_settings()
    get_settings.cache_clear()
