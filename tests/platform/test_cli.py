"""The `atlas` CLI against the real test services."""

from __future__ import annotations

from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()


def test_status_reports_both_services(services):
    result = runner.invoke(app, ["services", "status"])
    assert result.exit_code == 0, result.output
    assert "neo4j: running" in result.output and "redis:" in result.output and "answering" in result.output


def test_migrate_twice_second_is_a_no_op(neo4j_driver):
    runner.invoke(app, ["migrate"])
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 0, result.output
    assert "nothing to apply" in result.output


def test_help_lists_the_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("services", "migrate", "api", "worker", "demo"):
        assert name in result.output
