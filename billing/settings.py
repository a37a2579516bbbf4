"""The billing domain's settings, read once from the environment: where the system-of-record database is.

`DATABASE_URL`: a SQLAlchemy URL. Default: a SQLite file `<AIHUB_VAR_DIR>/aihub.db` (nothing to install);
production: `postgresql+psycopg://user:password@host:5432/aihub`. A malformed value fails with the variable's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gateway.errors import ConfigError
from gateway.settings import ROOT, environment, var_dir

SUPPORTED = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Settings:
    database_url: str
    seller_name: str = "AI Hub"
    seller_address: str = ""
    seller_country: str = "DE"          # AIHUB_SELLER_COUNTRY: decides domestic VAT and reverse charge
    seller_tax_id: str = ""
    invoice_net_days: int = 14          # AIHUB_INVOICE_NET_DAYS: due date = issue date + net days
    tax_table: Path = ROOT / "config" / "tax.toml"
    require_payment_method: bool = True  # AIHUB_REQUIRE_PAYMENT_METHOD: an upgrade to a paid plan needs one
    dunning_retry_days: tuple[int, ...] = (1, 3, 5, 7)   # AIHUB_DUNNING_RETRY_DAYS, days after the first failure

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = environment(environ)
        explicit = env.get("DATABASE_URL")
        url = explicit or f"sqlite:///{var_dir(env) / 'aihub.db'}"
        try:
            parsed = make_url(url)
            parsed.port                     # noqa: B018 (parses it: a bad port fails here, not on first use)
            backend = parsed.get_backend_name()
        except (ArgumentError, ValueError) as exc:
            raise ConfigError(f"DATABASE_URL is malformed ({type(exc).__name__}: {str(exc)[:100]}); expected e.g. "
                              "sqlite:////path/aihub.db or postgresql+psycopg://user:pw@host:5432/aihub") from None
        shown = parsed.render_as_string(hide_password=True)
        if backend not in SUPPORTED:
            raise ConfigError(f"DATABASE_URL={shown!r}: the database must be one of {', '.join(SUPPORTED)}")
        if explicit and backend == "sqlite" and parsed.database and parsed.database != ":memory:" \
                and not Path(parsed.database).parent.is_dir():
            raise ConfigError(f"DATABASE_URL={shown!r}: the directory {Path(parsed.database).parent} does not exist")
        country = env.get("AIHUB_SELLER_COUNTRY") or cls.seller_country
        if len(country) != 2 or not country.isalpha():
            raise ConfigError(f"AIHUB_SELLER_COUNTRY={country!r} must be an ISO 3166-1 alpha-2 code such as DE")
        net = env.get("AIHUB_INVOICE_NET_DAYS") or str(cls.invoice_net_days)
        if not net.isdigit() or int(net) > 365:
            raise ConfigError(f"AIHUB_INVOICE_NET_DAYS={net!r} must be a whole number of days (0 to 365)")
        require = (env.get("AIHUB_REQUIRE_PAYMENT_METHOD") or "1").strip().lower()
        if require not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
            raise ConfigError(f"AIHUB_REQUIRE_PAYMENT_METHOD={require!r} must be 0 or 1")
        days_raw = env.get("AIHUB_DUNNING_RETRY_DAYS") or "1,3,5,7"
        try:
            days = tuple(int(d) for d in days_raw.split(","))
        except ValueError:
            days = ()
        if not days or any(d <= 0 for d in days) or list(days) != sorted(set(days)):
            raise ConfigError(f"AIHUB_DUNNING_RETRY_DAYS={days_raw!r} must be increasing whole days, e.g. 1,3,5,7")
        return cls(database_url=url, require_payment_method=require in ("1", "true", "yes", "on"),
                   dunning_retry_days=days, seller_name=env.get("AIHUB_SELLER_NAME") or cls.seller_name,
                   seller_address=env.get("AIHUB_SELLER_ADDRESS") or "", seller_country=country.upper(),
                   seller_tax_id=env.get("AIHUB_SELLER_TAX_ID") or "", invoice_net_days=int(net),
                   tax_table=Path(env.get("AIHUB_TAX_TABLE") or cls.tax_table))
