"""Secrets encrypted at rest: Fernet keys from AIHUB_SECRET_KEYS (newest first, old keys still readable), the
0600 key file of the embedded default, and an EncryptedString column that keeps no secret in clear."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, Integer, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from billing import crypto
from billing.crypto import EncryptedString, UndecryptableSecret
from billing.db.engine import make_engine
from billing.errors import BillingError
from gateway.errors import ConfigError

SECRET = "whsec_test_5f3c9a1e7b2d4c6e8f0a1b3c5d7e9f21"
KEY_A = crypto.generate_key()
KEY_B = crypto.generate_key()


@pytest.fixture(autouse=True)
def _fresh_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(crypto.ENV, KEY_A)
    crypto.reload()
    yield
    crypto.reload()


def use_keys(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv(crypto.ENV, keys)


def test_roundtrip() -> None:
    stored = crypto.encrypt(SECRET)
    assert stored.startswith("enc:v1:") and crypto.is_encrypted(stored)
    assert SECRET not in stored
    assert crypto.decrypt(stored) == SECRET
    assert crypto.encrypt(SECRET) != stored                     # randomised: equal secrets do not show
    assert crypto.decrypt(crypto.encrypt("")) == ""
    assert crypto.decrypt(crypto.encrypt("ünïcødé 🔑")) == "ünïcødé 🔑"
    assert not crypto.is_encrypted(SECRET)


def test_rotation_keeps_old_values_readable_and_rotate_moves_them_to_the_newest_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    old = crypto.encrypt(SECRET)                                # with key A
    use_keys(monkeypatch, f"{KEY_B},{KEY_A}")
    assert crypto.decrypt(old) == SECRET                        # the old key still reads it
    assert crypto.decrypt(crypto.encrypt(SECRET)) == SECRET
    rotated = crypto.rotate(old)
    assert rotated.startswith(crypto.PREFIX) and rotated != old
    new = crypto.encrypt(SECRET)
    use_keys(monkeypatch, KEY_B)                                # key A retired
    assert crypto.decrypt(rotated) == SECRET
    assert crypto.decrypt(new) == SECRET                        # encryption used the first key, B
    with pytest.raises(UndecryptableSecret):
        crypto.decrypt(old)


def test_rotate_encrypts_plain_legacy_text() -> None:
    rotated = crypto.rotate(SECRET)
    assert crypto.is_encrypted(rotated) and crypto.decrypt(rotated) == SECRET


def test_a_wrong_key_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = crypto.encrypt(SECRET)
    use_keys(monkeypatch, KEY_B)
    with pytest.raises(UndecryptableSecret) as caught:
        crypto.decrypt(stored)
    assert isinstance(caught.value, BillingError)
    assert caught.value.code == "undecryptable_secret" and caught.value.status == 500
    assert "AIHUB_SECRET_KEYS" in caught.value.message
    assert KEY_A not in caught.value.message and KEY_B not in caught.value.message
    with pytest.raises(UndecryptableSecret):
        crypto.rotate(stored)
    with pytest.raises(UndecryptableSecret):
        crypto.decrypt(crypto.PREFIX + "not-a-token")


@pytest.mark.parametrize("keys", ["not-a-key", f"{KEY_A},", f"{KEY_A},short", "Zm9v", KEY_A[:-2]],
                         ids=["garbage", "trailing-comma", "second-bad", "too-short", "truncated"])
def test_malformed_keys_name_the_variable(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    use_keys(monkeypatch, keys)
    with pytest.raises(ConfigError, match="AIHUB_SECRET_KEYS") as caught:
        crypto.encrypt(SECRET)
    assert KEY_A not in str(caught.value)                       # a key is never printed


def test_keys_are_read_once_per_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    first = crypto.keyring()
    assert crypto.keyring() is first
    use_keys(monkeypatch, f"{KEY_B},{KEY_A}")
    second = crypto.keyring()
    assert second is not first and second.count == 2 and second.source == "AIHUB_SECRET_KEYS"
    assert crypto.keyring() is second


def test_unset_variable_uses_a_0600_key_file_under_the_var_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(crypto.ENV)
    var = Path(os.environ["AIHUB_VAR_DIR"])
    key_file = var / "secret.key"
    assert not key_file.exists()
    umask = os.umask(0)                                         # 0600 whatever the umask
    try:
        stored = crypto.encrypt(SECRET)
    finally:
        os.umask(umask)
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in var.iterdir()] == ["secret.key"]    # nothing left aside
    assert str(key_file) in crypto.keyring().source
    crypto.reload()                                             # a later process reads the same key
    assert crypto.decrypt(stored) == SECRET
    use_keys(monkeypatch, key_file.read_text().strip())         # it is an ordinary Fernet key
    assert crypto.decrypt(stored) == SECRET


def test_a_key_file_readable_by_others_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(crypto.ENV)
    var = Path(os.environ["AIHUB_VAR_DIR"])
    var.mkdir(parents=True)
    (var / "secret.key").write_text(KEY_A + "\n")
    (var / "secret.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        crypto.encrypt(SECRET)


def test_stored_length_fits_the_ciphertext() -> None:
    for n in (0, 1, 3, 4, 15, 16, 100, 255):
        longest = "🔑" * n                                      # 4 UTF-8 bytes a character
        assert len(crypto.encrypt(longest)) == crypto.stored_length(n)     # the bound is exact
        assert len(crypto.encrypt("a" * n)) <= crypto.stored_length(n)


class Base(DeclarativeBase):
    pass


class ProviderSecret(Base):
    __tablename__ = "crypto_test_secrets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    signing_secret: Mapped[str] = mapped_column(EncryptedString(100))
    customer_token: Mapped[str | None] = mapped_column(EncryptedString())


@pytest.fixture
def secrets_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_the_database_holds_no_secret_in_clear(secrets_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with Session(secrets_engine) as session, session.begin():
        session.add(ProviderSecret(id=1, signing_secret=SECRET, customer_token="cus_Q8xYzSecretToken"))
        session.add(ProviderSecret(id=2, signing_secret=SECRET, customer_token=None))
    with secrets_engine.connect() as conn:
        rows = conn.execute(text("SELECT id, signing_secret, customer_token FROM crypto_test_secrets "
                                 "ORDER BY id")).all()
    assert len(rows) == 2
    for _id, raw_secret, raw_token in rows:
        assert raw_secret.startswith("enc:v1:") and SECRET not in raw_secret
        assert raw_token is None or ("cus_Q8xYzSecretToken" not in raw_token and raw_token.startswith("enc:v1:"))
    assert rows[0][1] != rows[1][1]                             # equal secrets are not equal ciphertexts
    assert rows[1][2] is None
    with Session(secrets_engine) as session:
        first = session.get(ProviderSecret, 1)
        assert first is not None
        assert (first.signing_secret, first.customer_token) == (SECRET, "cus_Q8xYzSecretToken")

    use_keys(monkeypatch, f"{KEY_B},{KEY_A}")                   # rotate the stored values, then retire key A
    with secrets_engine.begin() as conn:
        for row_id, raw_secret, raw_token in rows:
            conn.execute(text("UPDATE crypto_test_secrets SET signing_secret = :s, customer_token = :t "
                              "WHERE id = :id"),
                         {"s": crypto.rotate(raw_secret), "t": raw_token and crypto.rotate(raw_token), "id": row_id})
    use_keys(monkeypatch, KEY_B)
    with Session(secrets_engine) as session:
        assert [(r.signing_secret, r.customer_token) for r in session.query(ProviderSecret).order_by("id")] == [
            (SECRET, "cus_Q8xYzSecretToken"), (SECRET, None)]


def test_plain_legacy_values_read_back_as_they_are(secrets_engine: Engine) -> None:
    with secrets_engine.begin() as conn:
        conn.execute(text("INSERT INTO crypto_test_secrets (id, signing_secret) VALUES (1, :v)"), {"v": "legacy"})
    with Session(secrets_engine) as session:
        row = session.get(ProviderSecret, 1)
        assert row is not None and row.signing_secret == "legacy"


def test_a_column_value_no_key_decrypts_raises_the_clear_error(secrets_engine: Engine,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with Session(secrets_engine) as session, session.begin():
        session.add(ProviderSecret(id=1, signing_secret=SECRET))
    use_keys(monkeypatch, KEY_B)
    with Session(secrets_engine) as session, pytest.raises(UndecryptableSecret):
        session.get(ProviderSecret, 1)
