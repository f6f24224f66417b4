"""`atlas zoo info` on a cache without a build tells the user how to make one (and builds nothing)."""

from __future__ import annotations

from typer.testing import CliRunner

from workers.settings import get_settings
from workers.zoo.build import build_key
from workers.zoo.cli import app


def test_info_on_an_empty_cache_points_to_build(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ATLAS_CACHE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["info"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert build_key() in result.output
    assert "atlas zoo build" in result.output
    assert not any(tmp_path.iterdir())  # info never builds
