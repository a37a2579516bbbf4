"""Tax on an invoice: one line on the tax-exclusive subtotal, from a versioned table of rates (config/tax.toml).

Plain functions, no database. `load_tax_table(path)` reads and validates the table (gateway.errors.ConfigError on
a missing or malformed file, naming the file and the entry); `TaxTable.tax_for(...)` gives the invoice's tax line:

- the rate is the one in effect on the given date for the customer's jurisdiction: "CC-RR" (country and region,
  e.g. "US-NY") if listed, else "CC", else the table's default (0 %, "No tax");
- an EU business (a VAT id that passes `stdnum.eu.vat.is_valid` and whose prefix is the customer's country, EL
  for GR) in another country than the seller's is reverse-charged: 0 %, `reverse_charge=True` and the legal note;
- a VAT id that is not valid, or is not from the customer's country, is ignored (the customer is taxed as a
  consumer) and the line's note says so; a business in the seller's own country pays domestic VAT;
- amount = subtotal x rate / 100, in Decimal, rounded half-up to the minor unit (half away from zero for a
  negative subtotal, e.g. a credit). Never float.

The seller's country is an argument (the caller reads the setting AIHUB_SELLER_COUNTRY).
"""

from __future__ import annotations

import datetime
import re
import tomllib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from itertools import pairwise
from pathlib import Path
from typing import Any

from stdnum.eu import vat as eu_vat

from billing.errors import InvalidInput
from gateway.errors import ConfigError

REVERSE_CHARGE_NOTE = ("Reverse charge: VAT to be accounted for by the recipient "
                       "(Article 196, Council Directive 2006/112/EC).")
INVALID_VAT_ID_NOTE = "VAT id not valid; taxed as a consumer"
FOREIGN_VAT_ID_NOTE = "VAT id is not from {country}; taxed as a consumer"

COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
REGION_RE = re.compile(r"^[A-Z0-9]{1,3}$")
KEY_RE = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")
VAT_PREFIX = {"GR": "EL"}          # VAT ids of Greece start with EL, not its ISO code
HUNDRED = Decimal(100)


@dataclass(frozen=True)
class TaxLine:
    """The invoice's tax line.

    rate: percent as a Decimal (Decimal("19") = 19 %; 0 when reverse-charged or not taxed).
    jurisdiction: who levies it, e.g. "DE VAT", "US-NY sales tax", "No tax".
    amount_minor: the tax in the invoice currency's minor unit (cents, fen), same sign as the subtotal.
    reverse_charge: True when the customer accounts for the VAT (EU business, other member state than the seller).
    note: text to print with the line (the legal reverse-charge note, or why a VAT id was ignored), else None.
    """

    rate: Decimal
    jurisdiction: str
    amount_minor: int
    reverse_charge: bool
    note: str | None


@dataclass(frozen=True)
class RateEntry:
    """A rate (percent) in effect from `effective_from` (inclusive) until the next entry's date."""

    effective_from: datetime.date
    rate: Decimal


@dataclass(frozen=True)
class Jurisdiction:
    """One row of the table. key: "CC" or "CC-RR"; rates sorted by date, dates unique; eu: an EU member state."""

    key: str
    name: str
    eu: bool
    rates: tuple[RateEntry, ...]

    def rate_on(self, on: datetime.date) -> Decimal:
        """The rate in effect on `on`; ConfigError if the table has no entry that early."""
        index = bisect_right([entry.effective_from for entry in self.rates], on)
        if index == 0:
            raise ConfigError(f"tax table: no rate for {self.key} on {on.isoformat()} "
                              f"(its first rate is from {self.rates[0].effective_from.isoformat()})")
        return self.rates[index - 1].rate


def tax_amount_minor(subtotal_minor: int, rate: Decimal) -> int:
    """subtotal (minor units) x rate (percent) / 100, rounded half-up (away from zero) to a whole minor unit."""
    with localcontext() as ctx:
        ctx.prec = 60                      # exact for any realistic subtotal and rate
        exact = Decimal(subtotal_minor) * rate / HUNDRED
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class TaxTable:
    """The loaded table. version: the file's `version`; jurisdictions by key ("DE", "US-NY"); default: the
    jurisdiction name and rate for anything not listed."""

    version: str
    jurisdictions: Mapping[str, Jurisdiction]
    default_name: str
    default_rate: Decimal

    @property
    def eu_countries(self) -> frozenset[str]:
        """ISO country codes marked `eu = true`."""
        return frozenset(j.key for j in self.jurisdictions.values() if j.eu and "-" not in j.key)

    def jurisdiction(self, country: str, region: str = "") -> Jurisdiction | None:
        """The listed jurisdiction for a customer: "CC-RR" if listed, else "CC", else None (the default applies)."""
        country, region = _place(country, region)
        if region and (found := self.jurisdictions.get(f"{country}-{region}")) is not None:
            return found
        return self.jurisdictions.get(country)

    def tax_for(self, country: str, region: str, tax_id: str | None, subtotal_minor: int, on: datetime.date,
                seller_country: str) -> TaxLine:
        """The tax line for an invoice.

        country: the customer's ISO 3166-1 alpha-2 code ("DE"); region: its region ("NY") or "" (case-insensitive).
        tax_id: the customer's VAT id as entered ("FR 40 303 265 045"), or None / "" for a consumer.
        subtotal_minor: the tax-exclusive subtotal in minor units (an int; negative for a credit).
        on: the date whose rates apply (the invoice's period, e.g. its last day).
        seller_country: the seller's ISO code (setting AIHUB_SELLER_COUNTRY).
        Raises InvalidInput for a malformed country, region or amount, ConfigError when the table has no rate
        for the jurisdiction that early.
        """
        if isinstance(subtotal_minor, bool) or not isinstance(subtotal_minor, int):
            raise InvalidInput(f"subtotal_minor must be an integer amount in minor units, not {subtotal_minor!r}")
        country, region = _place(country, region)
        seller = _country(seller_country, "seller_country")
        found = self.jurisdiction(country, region)
        if found is None:
            return TaxLine(rate=self.default_rate, jurisdiction=self.default_name,
                           amount_minor=tax_amount_minor(subtotal_minor, self.default_rate),
                           reverse_charge=False, note=None)
        rate = found.rate_on(on)
        note: str | None = None
        tax_id = (tax_id or "").strip()
        if tax_id and found.eu:
            if not eu_vat.is_valid(tax_id):
                note = INVALID_VAT_ID_NOTE
            elif not eu_vat.compact(tax_id).startswith(VAT_PREFIX.get(country, country)):
                note = FOREIGN_VAT_ID_NOTE.format(country=country)
            elif country != seller:
                return TaxLine(rate=Decimal(0), jurisdiction=found.name, amount_minor=0, reverse_charge=True,
                               note=REVERSE_CHARGE_NOTE)
        return TaxLine(rate=rate, jurisdiction=found.name, amount_minor=tax_amount_minor(subtotal_minor, rate),
                       reverse_charge=False, note=note)


def _country(value: str, what: str) -> str:
    code = value.strip().upper() if isinstance(value, str) else ""
    if not COUNTRY_RE.match(code):
        raise InvalidInput(f"{what}={value!r} must be a two-letter ISO 3166-1 country code")
    return code


def _place(country: str, region: str) -> tuple[str, str]:
    code = _country(country, "country")
    area = (region or "").strip().upper()
    if area and not REGION_RE.match(area):
        raise InvalidInput(f"region={region!r} must be 1 to 3 letters or digits, or empty")
    return code, area


def _rate(value: Any, where: str) -> Decimal:
    if not isinstance(value, str):
        raise ConfigError(f"tax table {where}: rate must be a decimal string in percent, e.g. \"19\", "
                          f"not {value!r}")
    try:
        rate = Decimal(value.strip())
    except InvalidOperation:
        raise ConfigError(f"tax table {where}: rate {value!r} is not a decimal number") from None
    if not rate.is_finite() or not Decimal(0) <= rate < HUNDRED:
        raise ConfigError(f"tax table {where}: rate {value!r} must be a percentage from 0 to below 100")
    return rate


def _unknown_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ConfigError(f"tax table {where}: unknown key(s) {', '.join(extra)} "
                          f"(allowed: {', '.join(sorted(allowed))})")


def _jurisdiction(key: str, raw: Any, where: str) -> Jurisdiction:
    if not KEY_RE.match(key):
        raise ConfigError(f"tax table {where}: keys are a country code \"CC\" or \"CC-RR\" (upper case), not {key!r}")
    if not isinstance(raw, dict):
        raise ConfigError(f"tax table {where} must be a table")
    _unknown_keys(raw, {"name", "eu", "rates"}, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"tax table {where}.name must be a non-empty string, e.g. \"{key} VAT\"")
    eu = raw.get("eu", False)
    if not isinstance(eu, bool):
        raise ConfigError(f"tax table {where}.eu must be true or false")
    if eu and "-" in key:
        raise ConfigError(f"tax table {where}: eu = true goes on a country, not a region")
    rates = raw.get("rates")
    if not isinstance(rates, list) or not rates:
        raise ConfigError(f"tax table {where}.rates must be a non-empty list of {{ from = YYYY-MM-DD, rate = \"..\" }}")
    entries: list[RateEntry] = []
    for index, item in enumerate(rates):
        at = f"{where}.rates[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"tax table {at} must be {{ from = YYYY-MM-DD, rate = \"..\" }}")
        _unknown_keys(item, {"from", "rate"}, at)
        start = item.get("from")
        if isinstance(start, str):
            try:
                start = datetime.date.fromisoformat(start)
            except ValueError:
                raise ConfigError(f"tax table {at}.from={item['from']!r} is not a date YYYY-MM-DD") from None
        if not isinstance(start, datetime.date) or isinstance(start, datetime.datetime):
            raise ConfigError(f"tax table {at}.from must be a date (YYYY-MM-DD), not {item.get('from')!r}")
        entries.append(RateEntry(effective_from=start, rate=_rate(item.get("rate"), at)))
    entries.sort(key=lambda entry: entry.effective_from)
    for before, after in pairwise(entries):
        if before.effective_from == after.effective_from:
            raise ConfigError(f"tax table {where}: two rates from {after.effective_from.isoformat()}")
    return Jurisdiction(key=key, name=name.strip(), eu=eu, rates=tuple(entries))


def parse_tax_table(raw: Mapping[str, Any], source: str = "<memory>") -> TaxTable:
    """Validate a parsed TOML document (see config/tax.toml for the shape); ConfigError names what is wrong."""
    _unknown_keys(raw, {"version", "default", "jurisdictions"}, source)
    version = raw.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ConfigError(f"tax table {source}: `version` must be a non-empty string, e.g. \"2026-11-30\"")
    default = raw.get("default", {})
    if not isinstance(default, dict):
        raise ConfigError(f"tax table {source}: [default] must be a table")
    _unknown_keys(default, {"jurisdiction", "rate"}, f"{source} [default]")
    default_name = default.get("jurisdiction", "No tax")
    if not isinstance(default_name, str) or not default_name.strip():
        raise ConfigError(f"tax table {source} [default].jurisdiction must be a non-empty string")
    default_rate = _rate(default.get("rate", "0"), f"{source} [default]")
    listed = raw.get("jurisdictions")
    if not isinstance(listed, dict) or not listed:
        raise ConfigError(f"tax table {source}: [jurisdictions.CC] tables are missing")
    jurisdictions = {key: _jurisdiction(key, value, f"{source} [jurisdictions.{key}]")
                     for key, value in listed.items()}
    return TaxTable(version=version.strip(), jurisdictions=jurisdictions, default_name=default_name.strip(),
                    default_rate=default_rate)


def load_tax_table(path: Path | str) -> TaxTable:
    """Read and validate a tax table file (config/tax.toml); ConfigError if it is missing or malformed."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"tax table file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"tax table file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"tax table file {path} is not valid TOML: {exc}") from None
    return parse_tax_table(raw, str(path))
