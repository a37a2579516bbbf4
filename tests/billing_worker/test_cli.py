from __future__ import annotations

import io
import os
from pathlib import Path

import orjson
import pytest
import redis

from billing_worker.cli import main
from billing_worker.progress import ProgressBar
from billing_worker.settings import Settings
from gateway.keys import AccountKeys
from tests.billing_worker.usage_factory import make_entry, write_entries


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("CLICKHOUSE_URL", settings.clickhouse_url)
    monkeypatch.setenv("AIHUB_DRAIN_BATCH_SIZE", "100")
    return settings


def test_migrate_drain_usage_export(env: Settings, r: redis.Redis, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    assert main(["migrate"]) == 0
    assert "2 applied" in capsys.readouterr().out
    assert main(["migrate"]) == 0
    assert "0 applied, 2 already applied" in capsys.readouterr().out

    write_entries(r, [make_entry(i, acct="acme") for i in range(250)])
    r.hset(AccountKeys("acme", 16).quota("2026-11"), mapping={"used": 250, "m:gpt-4o:calls": 84})
    assert main(["drain"]) == 0
    captured = capsys.readouterr()
    assert orjson.loads(captured.out)["inserted"] == 250
    assert "250/250 rows" in captured.err  # the progress bar

    assert main(["usage", "acme", "--period", "2026-11"]) == 0
    text = capsys.readouterr().out
    assert "live (Redis): 250 calls used" in text and "history (ClickHouse): 250 calls" in text
    assert main(["usage", "acme", "--period", "2026-11", "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["current"]["models"]["gpt-4o"]["calls"] == 84
    assert report["history"]["totals"]["calls"] == 250 and len(report["history"]["by_model"]) == 3

    target = tmp_path / "usage.csv"
    assert main(["export", "--period", "2026-11", "--format", "csv", "--by", "model", "-o", str(target)]) == 0
    assert target.read_text().splitlines()[0].startswith("acct,day,model")
    assert len(target.read_text().splitlines()) == 4
    assert main(["export", "--period", "2026-11", "--format", "json", "--account", "acme", "--by", ""]) == 0
    assert orjson.loads(capsys.readouterr().out)[0]["calls"] == 250
    assert main(["rollup", "--period", "2026-11"]) == 0
    assert main(["anomalies", "--period", "2026-11"]) == 0


def test_migrate_print_cluster_needs_no_server(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--cluster", "prod", "--print"]) == 0
    out = capsys.readouterr().out
    assert "ENGINE = Distributed('prod', currentDatabase(), usage_rows_local, cityHash64(acct))" in out


def test_errors_become_exit_codes(env: Settings, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "acme", "--period", "November"]) == 2
    assert "period must look like" in capsys.readouterr().err
    monkeypatch.setenv("AIHUB_SHARDS", "-1")
    assert main(["drain"]) == 2
    assert "AIHUB_SHARDS" in capsys.readouterr().err
    monkeypatch.setenv("AIHUB_SHARDS", "16")
    monkeypatch.setenv("CLICKHOUSE_URL", "http://127.0.0.1:9/x")
    monkeypatch.setenv("AIHUB_DRAIN_INSERT_ATTEMPTS", "1")
    assert main(["migrate"]) == 3


def test_progress_bar_rendering() -> None:
    out = io.StringIO()
    bar = ProgressBar(200, out=out)
    assert bar.render(50).startswith("[#######.......................] 50/200 rows  25.0%")
    bar.update(200)
    bar.finish()
    assert out.getvalue().splitlines()[-1].startswith("[" + "#" * 30 + "] 200/200 rows 100.0%")


def test_usage_of_an_unknown_account_is_an_error(env: Settings, r: redis.Redis,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    capsys.readouterr()
    assert main(["usage", "nobody", "--period", "2026-11"]) == 2
    assert "unknown account 'nobody'" in capsys.readouterr().err
    assert main(["usage", "Bad Id!", "--period", "2026-11"]) == 2
    assert "not an account id" in capsys.readouterr().err
    r.hset(AccountKeys("newbie", 16).account, mapping={"plan": "pro", "status": "active"})
    assert main(["usage", "newbie", "--period", "2026-11"]) == 0     # known to the gateway, no usage yet
    assert "history (ClickHouse): no usage loaded" in capsys.readouterr().out


def test_anomalies_says_when_there_are_none(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    capsys.readouterr()
    assert main(["anomalies", "--period", "2026-11"]) == 0
    assert capsys.readouterr().out == "no anomalies for 2026-11\n"
    assert main(["anomalies", "--period", "2026-11", "--account", "acme"]) == 0
    assert capsys.readouterr().out == "no anomalies for acme in 2026-11\n"
    assert main(["anomalies", "--period", "2026-11", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == []


def test_drain_uses_the_running_stack_and_says_which_redis(
        env: Settings, r: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.runtime import Runtime, runtime_path, write_runtime
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.delenv("CLICKHOUSE_URL")
    monkeypatch.setenv("AIHUB_VAR_DIR", str(tmp_path / "var"))
    write_runtime(runtime_path(tmp_path / "var"), Runtime(
        pid=os.getpid(), redis_url=env.redis_url, clickhouse_url=env.clickhouse_url, gateway_url="http://x"))
    write_entries(r, [make_entry(i, acct="acme") for i in range(5)])
    assert main(["migrate"]) == 0                     # the stack's ClickHouse too
    assert "2 applied" in capsys.readouterr().out
    assert main(["drain", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert orjson.loads(captured.out)["inserted"] == 5
    assert f"using Redis {env.redis_url} (the running `make up`, pid {os.getpid()}" in captured.err
    assert main(["usage", "acme", "--period", "2026-11"]) == 0
    assert "history (ClickHouse): 5 calls" in capsys.readouterr().out
