"""Settings and catalog fail at start-up with the name of what is wrong; the admin CLI does what it says."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import redis

from gateway.catalog import load_catalog
from gateway.cli import main
from gateway.errors import ConfigError
from gateway.keys import AccountKeys, hash_api_key
from gateway.settings import ROOT, Settings


def test_settings_read_typed_values_and_upstreams() -> None:
    settings = Settings.from_env({"AIHUB_PORT": "9000", "AIHUB_QUOTA_CHECKS": "off",
                                  "AIHUB_UPSTREAM_DEFAULT_URL": "http://up:1/", "AIHUB_UPSTREAM_DEFAULT_KEY": "k"})
    assert settings.port == 9000 and settings.quota_checks is False
    assert settings.upstream_urls == {"default": "http://up:1"} and settings.upstream_keys == {"default": "k"}


@pytest.mark.parametrize(("env", "named"), [
    ({"AIHUB_PORT": "eighty"}, "AIHUB_PORT"),
    ({"AIHUB_QUOTA_CHECKS": "maybe"}, "AIHUB_QUOTA_CHECKS"),
    ({"AIHUB_REDIS_FAILURE_POLICY": "sometimes"}, "AIHUB_REDIS_FAILURE_POLICY"),
    ({"AIHUB_SHARDS": "0"}, "AIHUB_SHARDS"),
    ({"AIHUB_PERIOD_GRACE_DAYS": "-1"}, "AIHUB_PERIOD_GRACE_DAYS"),
])
def test_malformed_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "aihub.env"
    env_file.write_text("# comment\nAIHUB_PORT=7000\nAIHUB_SHARDS=8\n")
    settings = Settings.from_env({"AIHUB_ENV_FILE": str(env_file), "AIHUB_SHARDS": "4"})
    assert settings.port == 7000 and settings.shards == 4


def test_the_spool_is_the_var_dirs_own_unless_set(tmp_path: Path) -> None:
    """Two stacks on two var dirs never share a spool (a settle replayed into the other's Redis)."""
    assert Settings.from_env({"AIHUB_VAR_DIR": str(tmp_path / "a")}).spool_dir == tmp_path / "a" / "spool"
    assert Settings.from_env({}).spool_dir == ROOT / ".var" / "spool"
    assert Settings.from_env({"AIHUB_VAR_DIR": str(tmp_path / "a"),
                              "AIHUB_SPOOL_DIR": str(tmp_path / "s")}).spool_dir == tmp_path / "s"


def test_catalog_holds_the_three_seed_plans_in_integer_money() -> None:
    catalog = load_catalog(ROOT / "config" / "catalog.toml")
    free, pro, enterprise = catalog.plans["free"], catalog.plans["pro"], catalog.plans["enterprise"]
    assert (free.price_minor, free.included_calls, free.model_tiers) == (0, 100, ("basic",))
    assert (pro.price_minor, pro.included_calls, pro.custom_quota) == (2900, 5000, True)
    assert (enterprise.price_minor, enterprise.unlimited_calls) == (9900, True)
    assert catalog.models["gpt-4o-mini"].cost_nanos(1_000_000, 1_000_000) == 750_000_000   # $0.15 + $0.60


@pytest.mark.parametrize(("mutation", "message"), [
    (("overage = \"hard\"", "overage = \"sometimes\""), "plans.free.overage"),
    (("tier = \"advanced\"", "tier = \"golden\""), "models.gpt-4o.tier"),
    (("input_per_1m = \"2.50\"", "input_per_1m = \"cheap\""), "models.gpt-4o.input_per_1m"),
    (("rate_per_minute = 20", "rate_per_minute = 0"), "plans.free.rate_per_minute"),
])
def test_malformed_catalog_names_the_field(tmp_path: Path, mutation: tuple[str, str], message: str) -> None:
    text = (ROOT / "config" / "catalog.toml").read_text()
    assert mutation[0] in text
    path = tmp_path / "catalog.toml"
    path.write_text(text.replace(mutation[0], mutation[1], 1))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_catalog(path)


def test_an_unreadable_catalog_is_a_config_error(tmp_path: Path) -> None:
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[plans.caf\u00e9]\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_catalog(latin)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_catalog(tmp_path)                        # a directory


def test_cli_manages_accounts_keys_and_quotas(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["create-account", "--name", "Acme", "--plan", "pro", "--id", "acme", "--bank-transfer", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    client = redis.Redis.from_url(redis_url)
    stored = client.hgetall(AccountKeys("acme", 16).api_key(created["key_id"]))
    assert stored[b"sha256"].decode() == hash_api_key(created["api_key"])
    assert created["api_key"].encode() not in b"".join(v for k in client.keys("*") if client.type(k) == b"hash"
                                                       for v in client.hgetall(k).values())
    assert main(["set-quota", "acme", "20000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["subscription"]["custom_quota"] == 20000
    assert client.hget(AccountKeys("acme", 16).account, "custom_quota") == b"20000"
    assert main(["boost", "acme", "--calls", "50", "--until", "2099-01-01"]) == 0
    assert main(["revoke-key", "acme", created["key_id"]]) == 0
    capsys.readouterr()
    assert main(["create-account", "--name", "Tiny", "--plan", "free", "--id", "tiny"]) == 0
    capsys.readouterr()
    assert main(["set-quota", "tiny", "500"]) == 2
    assert "does not allow a custom quota" in capsys.readouterr().err
    assert main(["set-plan", "tiny", "platinum"]) == 2
    assert "Unknown plan" in capsys.readouterr().err
    assert main(["show-account", "nobody"]) == 2
    client.close()


@pytest.mark.parametrize(("mutation", "message"), [
    (('[models."gpt-4o"]', '[models."gpt|4o"]'), "model names"),
    (("[upstreams.default]", "[upstreams.Default-1]"), "upstreams.Default-1"),
    (("[plans.pro]", "[plans.Pro-Plan]"), "plan names"),
])
def test_names_that_would_break_keys_or_records_are_refused(tmp_path: Path, mutation: tuple[str, str],
                                                            message: str) -> None:
    text = (ROOT / "config" / "catalog.toml").read_text()
    path = tmp_path / "catalog.toml"
    path.write_text(text.replace(mutation[0], mutation[1], 1))
    with pytest.raises(ConfigError, match=message):
        load_catalog(path)


def test_without_a_known_redis_admin_changes_are_saved_only(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """No REDIS_URL and no running `make up`: nothing is written to whatever listens on the default port."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["create-account", "--name", "Offline", "--plan", "pro", "--id", "offline", "--bank-transfer",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert "no Redis updated" in captured.err and "saved in the database" in captured.err
    assert json.loads(captured.out)["account"] == "offline"
    assert main(["resync"]) == 2
    assert "No Redis to resync into" in capsys.readouterr().err
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["resync", "--json"]) == 0                            # once a Redis is named, it is projected
    assert json.loads(capsys.readouterr().out)["projected"] == 1
    assert redis.Redis.from_url(redis_url).hget(AccountKeys("offline", 16).account, "plan") == b"pro"
    for bad in (["set-quota", "offline", "99999999999999999999999"], ["set-quota", "offline", "١٢"],
                ["boost", "offline", "--calls", "99999999999999999999", "--until", "2099-01-01"],
                ["audit-log", "--limit", "-1"], ["audit-log", "--account", "nosuch"],
                ["create-account", "--name", "x", "--plan", "free", "--currency", "EURO"],
                ["create-account", "--name", "bad\x1b[31m", "--plan", "free"],
                ["create-account", "--name", "x", "--plan", "free", "--email", "not-an-email"],
                ["create-account", "--name", "x", "--plan", "free", "--tax-id", "x" * 5000]):
        with contextlib.suppress(SystemExit):
            assert main(bad) == 2, bad
        assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(("url", "shown", "hidden"), [
    ("mysql://u:hunter2secret@127.0.0.1/db", "one of sqlite, postgresql", "hunter2secret"),
    ("postgresql+psycopg://u:p@127.0.0.1:notaport/db", "DATABASE_URL is malformed", "notaport/db"),
    ("sqlite:////nonexistent-dir-aihub/x/aihub.db", "does not exist", "\n"),
])
def test_database_url_errors_are_clear_and_hide_passwords(url: str, shown: str, hidden: str) -> None:
    from billing.settings import Settings as DatabaseSettings
    with pytest.raises(ConfigError) as caught:
        DatabaseSettings.from_env({"DATABASE_URL": url})
    assert shown in str(caught.value) and hidden not in str(caught.value)
    assert not Path("/nonexistent-dir-aihub").exists()
