"""The admin store refuses what a plan does not offer: overage on a hard plan, a custom quota on an unlimited
one; the admin CLI turns that into a clear error and exit code 2."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.accounts import AccountStore
from gateway.cli import main


def test_overage_only_on_plans_that_offer_it(store: AccountStore) -> None:
    free = store.create_account("Free", "free")
    with pytest.raises(errors.InvalidRequest, match="Free plan has no pay-as-you-go overage") as refused:
        store.set_overage(free, True)
    assert refused.value.code == "overage_not_allowed"
    store.set_overage(free, False)                        # turning it off is always fine
    assert store.get_account(free)["overage"] == "0"
    ent = store.create_account("Ent", "enterprise")
    with pytest.raises(errors.InvalidRequest, match="unlimited calls"):
        store.set_overage(ent, True)
    pro = store.create_account("Pro", "pro")
    store.set_overage(pro, True)
    assert store.get_account(pro)["overage"] == "1"


def test_custom_quota_refused_on_unlimited_and_fixed_plans(store: AccountStore) -> None:
    ent = store.create_account("Ent", "enterprise")
    with pytest.raises(errors.InvalidRequest, match="Enterprise plan has unlimited calls") as refused:
        store.set_custom_quota(ent, 1000)
    assert refused.value.code == "custom_quota_not_allowed"
    store.set_custom_quota(ent, None)                     # back to the plan's: always fine
    free = store.create_account("Free", "free")
    with pytest.raises(errors.InvalidRequest, match="does not allow a custom quota"):
        store.set_custom_quota(free, 500)
    pro = store.create_account("Pro", "pro")
    store.set_custom_quota(pro, 20000)
    assert store.get_account(pro)["custom_quota"] == "20000"


def test_cli_reports_the_refusals(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["create-account", "--name", "Tiny", "--plan", "free", "--id", "tiny"]) == 0
    assert main(["create-account", "--name", "Big", "--plan", "enterprise", "--id", "bigco", "--bank-transfer"]) == 0
    capsys.readouterr()
    assert main(["set-overage", "tiny", "on"]) == 2
    assert "Free plan has no pay-as-you-go overage" in capsys.readouterr().err
    assert main(["set-quota", "bigco", "5000"]) == 2
    assert "Enterprise plan has unlimited calls" in capsys.readouterr().err
