"""Field encryption for secrets stored in the system-of-record database (webhook signing secrets, payment
providers' customer tokens, anything else sensitive), with keys from the environment only.

`AIHUB_SECRET_KEYS`: a comma-separated list of Fernet keys (32 bytes, urlsafe base64; `generate_key()` makes
one), newest first. Values are encrypted with the first key; every key in the list can decrypt
(`cryptography.fernet.MultiFernet`). To rotate: put a new key in front (`NEW,OLD`), re-encrypt the stored values
with `rotate()` (a value it gets is re-encrypted with the newest key), then drop the old key. A malformed value
fails with the variable's name (gateway.errors.ConfigError); the keys themselves are never printed.

Unset, for the embedded default (`make up`) only: a key file `<AIHUB_VAR_DIR>/secret.key`, created with mode 0600
on first use and read from then on. Production must set AIHUB_SECRET_KEYS (the key file lives beside the
database it protects, so it protects only a copy of the database made without it); tests set the variable.

A stored value is the text `enc:v1:<Fernet token>`. A value without the prefix is plain legacy text: it reads
back as it is and is encrypted on its next write (or by `rotate()`). A value no configured key decrypts raises
`UndecryptableSecret`, naming where the keys came from.

Columns: `mapped_column(EncryptedString())` (TEXT) or `mapped_column(EncryptedString(200))`, where 200 is the
longest plaintext in characters: the column is sized for its ciphertext (`stored_length`). Encryption is
randomised, so an encrypted column cannot be compared in SQL (`WHERE secret = ...`): find rows by other columns.

Settings are read once per environment: the loaded keys are cached by the values of AIHUB_SECRET_KEYS,
AIHUB_VAR_DIR and AIHUB_ENV_FILE (`keyring()`); `reload()` forgets them.
"""

from __future__ import annotations

import binascii
import contextlib
import os
import stat
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from billing.errors import BillingError
from gateway.errors import ConfigError
from gateway.settings import environment, var_dir

ENV = "AIHUB_SECRET_KEYS"
PREFIX = "enc:v1:"
KEY_FILE = "secret.key"


class UndecryptableSecret(BillingError):
    """A stored secret that none of the configured keys decrypts (a key removed too early, another
    environment's database, or a damaged value). A server-side fault, never the caller's."""

    status = 500
    code = "undecryptable_secret"


def generate_key() -> str:
    """A new random Fernet key, as text for AIHUB_SECRET_KEYS."""
    return Fernet.generate_key().decode("ascii")


def is_encrypted(stored: str) -> bool:
    """Whether a stored value is one of ours (`enc:v1:...`), as opposed to plain legacy text."""
    return stored.startswith(PREFIX)


def stored_length(plaintext_chars: int) -> int:
    """The longest stored text for a plaintext of up to `plaintext_chars` characters (4 UTF-8 bytes each)."""
    padded = (4 * plaintext_chars // 16 + 1) * 16                # PKCS7 always adds 1..16 bytes
    token_bytes = 1 + 8 + 16 + padded + 32                      # version, timestamp, IV, ciphertext, HMAC
    return len(PREFIX) + 4 * ((token_bytes + 2) // 3)           # urlsafe base64 with padding


@dataclass(frozen=True)
class Keyring:
    """The configured keys: `source` says where they came from (for messages, never the keys)."""

    fernet: MultiFernet
    count: int
    source: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        env = environment(environ)
        raw = env.get(ENV)
        if raw:
            keys = [_parse_key(item, f"{ENV}: key {n} of {len(raw.split(','))}")
                    for n, item in enumerate(raw.split(","), start=1)]
            return cls(MultiFernet(keys), len(keys), ENV)
        path = var_dir(env) / KEY_FILE
        return cls(MultiFernet([_key_file(path)]), 1, f"the key file {path} ({ENV} is not set)")

    def encrypt(self, plaintext: str) -> str:
        return PREFIX + self.fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, stored: str) -> str:
        if not is_encrypted(stored):
            raise UndecryptableSecret("the stored value is not an encrypted secret (no enc:v1: prefix)")
        try:
            return self.fernet.decrypt(stored[len(PREFIX):].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise UndecryptableSecret(self._mismatch()) from None

    def rotate(self, stored: str) -> str:
        """`stored` re-encrypted with the newest key (plain legacy text: encrypted)."""
        if not is_encrypted(stored):
            return self.encrypt(stored)
        try:
            return PREFIX + self.fernet.rotate(stored[len(PREFIX):].encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise UndecryptableSecret(self._mismatch()) from None

    def _mismatch(self) -> str:
        keys = "the key" if self.count == 1 else f"any of the {self.count} keys"
        return (f"a stored secret cannot be decrypted with {keys} from {self.source}: was it encrypted with a key "
                f"since removed from {ENV}, or in another environment?")


def _parse_key(item: str, where: str) -> Fernet:
    key = item.strip().encode("ascii", errors="replace")
    if not key:
        raise ConfigError(f"{where} is empty; expected comma-separated Fernet keys, newest first")
    try:
        return Fernet(key)
    except (ValueError, binascii.Error):
        raise ConfigError(f"{where} is not a Fernet key (32 bytes, urlsafe base64, 44 characters; make one with "
                          "billing.crypto.generate_key())") from None


def _key_file(path: Path) -> Fernet:
    """The embedded default's key: read `path`, or create it (mode 0600) on first use. Two processes starting
    at once agree on one key: the file appears whole (written aside, then linked into place) or not at all."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{KEY_FILE}.{uuid.uuid4().hex}")
        try:
            fd = os.open(aside, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(fd, 0o600)                        # whatever the umask
                out.write(generate_key().encode("ascii") + b"\n")
                out.flush()
                os.fsync(fd)
            with contextlib.suppress(FileExistsError):      # another process was first: its key wins
                os.link(aside, path)
        finally:
            aside.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"the key file {path} is readable by others (mode {mode:o}): chmod 600 it, or set {ENV}")
    return _parse_key(path.read_text("ascii", errors="replace"), f"the key file {path} ({ENV} is not set)")


@lru_cache(maxsize=8)
def _cached(_keys: str | None, _var_dir: str | None, _env_file: str | None) -> Keyring:
    return Keyring.from_env()


def keyring() -> Keyring:
    """The process's keys, loaded once per value of the variables they depend on."""
    return _cached(os.environ.get(ENV), os.environ.get("AIHUB_VAR_DIR"), os.environ.get("AIHUB_ENV_FILE"))


def reload() -> None:
    """Forget the loaded keys: the next use reads the environment (and the key file) again."""
    _cached.cache_clear()


def encrypt(plaintext: str) -> str:
    """`plaintext` encrypted with the newest key, as `enc:v1:<token>`."""
    return keyring().encrypt(plaintext)


def decrypt(stored: str) -> str:
    """The plaintext of an `enc:v1:` value; UndecryptableSecret if no configured key decrypts it."""
    return keyring().decrypt(stored)


def rotate(stored: str) -> str:
    """`stored` re-encrypted with the newest key (decrypted with whichever key matches); legacy text encrypted."""
    return keyring().rotate(stored)


class EncryptedString(TypeDecorator[str]):
    """A text column stored encrypted: encrypted on bind, decrypted on result; plain legacy values read back as
    they are. `EncryptedString(n)`: plaintexts up to n characters, a VARCHAR sized for the ciphertext;
    `EncryptedString()`: unbounded."""

    impl = String
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__(None if length is None else stored_length(length))
        self.plaintext_length = length

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TypeError(f"EncryptedString takes text, not {type(value).__name__}")
        if self.plaintext_length is not None and len(value) > self.plaintext_length:
            raise ValueError(f"the value is longer than the column's {self.plaintext_length} characters")
        return encrypt(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        text = str(value)
        return decrypt(text) if is_encrypted(text) else text

    @property
    def python_type(self) -> type[str]:
        return str
