"""The tax rule (billing.tax over config/tax.toml): rate by country/region and date, reverse charge for EU businesses,
half-up rounding to the minor unit. Pure: no database, no Redis."""

from __future__ import annotations

import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from billing.errors import InvalidInput
from billing.tax import (
    INVALID_VAT_ID_NOTE,
    REVERSE_CHARGE_NOTE,
    TaxLine,
    TaxTable,
    load_tax_table,
    tax_amount_minor,
)
from gateway.errors import ConfigError
from gateway.settings import ROOT

ON = datetime.date(2026, 11, 30)
FR_VAT_ID = "FR 40 303 265 045"      # checksum-valid (python-stdnum's documented example)
DE_VAT_ID = "DE 136,695 976"         # checksum-valid
EU_27 = {"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT", "LT", "LU",
         "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"}


@pytest.fixture(scope="module")
def table() -> TaxTable:
    return load_tax_table(ROOT / "config" / "tax.toml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tax.toml"
    path.write_text(text)
    return path


def test_the_shipped_table_lists_all_27_eu_member_states(table: TaxTable) -> None:
    assert table.version == "2026-11-30"
    assert table.eu_countries == EU_27
    expected = {"DE": "19", "FR": "20", "IT": "22", "ES": "21", "NL": "21", "HU": "27", "LU": "17", "FI": "25.5",
                "EE": "24", "RO": "21", "SK": "23", "GR": "24", "IE": "23", "SE": "25", "PL": "23"}
    for country, rate in expected.items():
        line = table.tax_for(country, "", None, 10000, ON, "DE")
        assert (line.rate, line.jurisdiction) == (Decimal(rate), f"{country} VAT"), country


def test_german_consumer_pays_19_percent(table: TaxTable) -> None:
    line = table.tax_for("DE", "", None, 2900, ON, "DE")
    assert line == TaxLine(rate=Decimal("19"), jurisdiction="DE VAT", amount_minor=551, reverse_charge=False,
                           note=None)


def test_french_business_with_valid_vat_id_is_reverse_charged_by_a_german_seller(table: TaxTable) -> None:
    line = table.tax_for("FR", "", FR_VAT_ID, 2900, ON, "DE")
    assert line == TaxLine(rate=Decimal(0), jurisdiction="FR VAT", amount_minor=0, reverse_charge=True,
                           note=REVERSE_CHARGE_NOTE)
    assert line.note == ("Reverse charge: VAT to be accounted for by the recipient "
                         "(Article 196, Council Directive 2006/112/EC).")
    # the id's spacing and case do not matter
    assert table.tax_for("fr", "", "fr40303265045", 2900, ON, "de").reverse_charge


def test_french_business_and_french_seller_pay_domestic_vat(table: TaxTable) -> None:
    line = table.tax_for("FR", "", FR_VAT_ID, 2900, ON, "FR")
    assert line == TaxLine(rate=Decimal("20"), jurisdiction="FR VAT", amount_minor=580, reverse_charge=False,
                           note=None)


def test_a_non_eu_seller_also_reverse_charges_an_eu_business(table: TaxTable) -> None:
    assert table.tax_for("FR", "", FR_VAT_ID, 2900, ON, "US").reverse_charge
    consumer = table.tax_for("FR", "", None, 2900, ON, "US")
    assert (consumer.rate, consumer.amount_minor, consumer.reverse_charge) == (Decimal(20), 580, False)


def test_an_invalid_vat_id_is_taxed_as_a_consumer_and_says_so(table: TaxTable) -> None:
    line = table.tax_for("FR", "", "FR 41 303 265 045", 2900, ON, "DE")     # check digits wrong
    assert line == TaxLine(rate=Decimal("20"), jurisdiction="FR VAT", amount_minor=580, reverse_charge=False,
                           note=INVALID_VAT_ID_NOTE)
    assert line.note == "VAT id not valid; taxed as a consumer"
    garbage = table.tax_for("FR", "", "not-a-vat-id", 2900, ON, "DE")
    assert (garbage.amount_minor, garbage.note) == (580, INVALID_VAT_ID_NOTE)


def test_a_valid_vat_id_from_another_country_than_the_account_is_taxed_as_a_consumer(table: TaxTable) -> None:
    line = table.tax_for("FR", "", DE_VAT_ID, 2900, ON, "NL")
    assert (line.rate, line.amount_minor, line.reverse_charge) == (Decimal(20), 580, False)
    assert line.note == "VAT id is not from FR; taxed as a consumer"


def test_greek_vat_ids_use_the_prefix_el(table: TaxTable) -> None:
    line = table.tax_for("GR", "", "EL 094259216", 2900, ON, "DE")
    assert (line.jurisdiction, line.reverse_charge, line.amount_minor) == ("GR VAT", True, 0)


def test_an_empty_tax_id_is_a_consumer(table: TaxTable) -> None:
    line = table.tax_for("DE", "", "  ", 2900, ON, "FR")
    assert (line.amount_minor, line.note) == (551, None)


def test_great_britain_20_percent_even_for_a_business(table: TaxTable) -> None:
    line = table.tax_for("GB", "", None, 2900, ON, "DE")
    assert line == TaxLine(rate=Decimal("20"), jurisdiction="GB VAT", amount_minor=580, reverse_charge=False,
                           note=None)
    assert table.tax_for("GB", "", "GB 980 7806 84", 2900, ON, "DE").amount_minor == 580


def test_china_6_percent_vat_on_a_cny_amount(table: TaxTable) -> None:
    line = table.tax_for("CN", "", None, 19900, ON, "DE")      # ¥199.00 in fen
    assert line == TaxLine(rate=Decimal("6"), jurisdiction="CN VAT", amount_minor=1194, reverse_charge=False,
                           note=None)


def test_us_state_sales_tax_by_region(table: TaxTable) -> None:
    new_york = table.tax_for("US", "NY", None, 2900, ON, "DE")
    assert new_york == TaxLine(rate=Decimal("4"), jurisdiction="US-NY sales tax", amount_minor=116,
                               reverse_charge=False, note=None)
    washington = table.tax_for("US", "wa", None, 2900, ON, "DE")
    assert (washington.rate, washington.jurisdiction, washington.amount_minor) == (Decimal("6.5"), "US-WA sales tax",
                                                                                   189)   # 188.5 -> 189
    texas = table.tax_for("US", "TX", None, 2900, ON, "DE")
    assert texas == TaxLine(rate=Decimal(0), jurisdiction="No tax", amount_minor=0, reverse_charge=False, note=None)
    assert table.tax_for("US", "", None, 2900, ON, "DE").amount_minor == 0


def test_a_country_not_in_the_table_is_not_taxed(table: TaxTable) -> None:
    for country in ("JP", "BR", "CH"):
        line = table.tax_for(country, "", None, 2900, ON, "DE")
        assert line == TaxLine(rate=Decimal(0), jurisdiction="No tax", amount_minor=0, reverse_charge=False,
                               note=None)


def test_an_unlisted_region_falls_back_to_its_country(table: TaxTable) -> None:
    assert table.tax_for("DE", "BY", None, 2900, ON, "DE").amount_minor == 551


@pytest.mark.parametrize(("subtotal", "rate", "tax"), [
    (2650, "19", 504),        # 503.5 -> 504
    (2850, "19", 542),        # 541.5 -> 542
    (2649, "19", 503),        # 503.31 -> 503
    (50, "1", 1),             # 0.5 -> 1
    (49, "1", 0),             # 0.49 -> 0
    (1, "25.5", 0),           # 0.255 -> 0
    (2, "25.5", 1),           # 0.51 -> 1
    (100, "6.5", 7),          # 6.5 -> 7 (not banker's 6)
    (-2650, "19", -504),      # a credit rounds away from zero, mirroring the charge
    (0, "19", 0),
    (10**15 + 50, "1", 10**13 + 1),   # exact for large amounts (no float)
])
def test_rounding_is_half_up_to_the_minor_unit(subtotal: int, rate: str, tax: int) -> None:
    assert tax_amount_minor(subtotal, Decimal(rate)) == tax


def test_rounding_through_the_table(table: TaxTable) -> None:
    assert table.tax_for("DE", "", None, 2650, ON, "DE").amount_minor == 504
    assert table.tax_for("FI", "", None, 2900, ON, "DE").amount_minor == 740     # 25.5 % of 2900 = 739.5


def test_historic_rate_changes_in_the_shipped_table(table: TaxTable) -> None:
    assert table.tax_for("EE", "", None, 10000, datetime.date(2025, 6, 30), "DE").rate == Decimal(22)
    assert table.tax_for("EE", "", None, 10000, datetime.date(2025, 7, 1), "DE").rate == Decimal(24)
    assert table.tax_for("RO", "", None, 10000, datetime.date(2025, 7, 31), "DE").rate == Decimal(19)
    assert table.tax_for("RO", "", None, 10000, datetime.date(2025, 8, 1), "DE").rate == Decimal(21)


TABLE_WITH_A_CHANGE = """
version = "2027-01-01"
[jurisdictions.DE]
name = "DE VAT"
eu = true
rates = [{ from = 2027-01-01, rate = "21" }, { from = 2024-01-01, rate = "19" }]   # order does not matter
"""


def test_a_later_rate_is_picked_by_the_date(tmp_path: Path) -> None:
    table = load_tax_table(write(tmp_path, TABLE_WITH_A_CHANGE))
    assert table.version == "2027-01-01"
    before = table.tax_for("DE", "", None, 2900, datetime.date(2026, 12, 31), "DE")
    after = table.tax_for("DE", "", None, 2900, datetime.date(2027, 1, 1), "DE")
    assert (before.rate, before.amount_minor) == (Decimal(19), 551)
    assert (after.rate, after.amount_minor) == (Decimal(21), 609)
    with pytest.raises(ConfigError, match="no rate for DE on 2023-12-31"):
        table.tax_for("DE", "", None, 2900, datetime.date(2023, 12, 31), "DE")
    # the default applies without a [default] table
    assert table.tax_for("JP", "", None, 2900, ON, "DE") == TaxLine(Decimal(0), "No tax", 0, False, None)


def test_rates_may_be_written_as_iso_date_strings(tmp_path: Path) -> None:
    text = 'version = "1"\n[jurisdictions.GB]\nname = "GB VAT"\nrates = [{ from = "2024-01-01", rate = "20" }]\n'
    assert load_tax_table(write(tmp_path, text)).tax_for("GB", "", None, 100, ON, "GB").amount_minor == 20


@pytest.mark.parametrize(("text", "message"), [
    ('[jurisdictions.DE]\nname = "DE VAT"\nrates = [{ from = 2024-01-01, rate = "19" }]\n', "version"),
    ('version = "1"\n', "jurisdictions"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\nrates = [{ from = 2024-01-01, rate = 19 }]\n',
     "decimal string"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\nrates = [{ from = 2024-01-01, rate = "19.x" }]\n',
     "not a decimal"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\nrates = [{ from = 2024-01-01, rate = "120" }]\n',
     "from 0 to below 100"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\nrates = [{ from = 2024-01-01, rate = "-1" }]\n',
     "from 0 to below 100"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\nrates = [{ from = "2024-13-01", rate = "19" }]\n',
     "not a date"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\nrates = [{ from = 2024-01-01T00:00:00, rate = "19" }]\n',
     "must be a date"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\nrates = []\n', "non-empty list"),
    ('version = "1"\n[jurisdictions.DE]\nrates = [{ from = 2024-01-01, rate = "19" }]\n', "name"),
    ('version = "1"\n[jurisdictions.de]\nname = "DE VAT"\nrates = [{ from = 2024-01-01, rate = "19" }]\n',
     "country code"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\nrate = "19"\n', "unknown key"),
    ('version = "1"\n[jurisdictions.DE]\nname = "DE VAT"\n'
     'rates = [{ from = 2024-01-01, rate = "19" }, { from = 2024-01-01, rate = "20" }]\n', "two rates from"),
    ('version = "1"\n[jurisdictions.US-NY]\nname = "x"\neu = true\nrates = [{ from = 2024-01-01, rate = "4" }]\n',
     "not a region"),
    ('version = "1"\n[jurisdictions.DE\n', "not valid TOML"),
])
def test_a_malformed_table_is_a_clear_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_tax_table(path)
    assert str(path) in str(caught.value)


def test_a_missing_table_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tax_table(tmp_path / "absent.toml")


@pytest.mark.parametrize(("country", "region", "seller", "subtotal"), [
    ("DEU", "", "DE", 100), ("", "", "DE", 100), ("DE", "", "Germany", 100), ("US", "NEWYORK", "DE", 100),
    ("DE", "", "DE", 1.5), ("DE", "", "DE", True),
])
def test_malformed_arguments_are_invalid_input(table: TaxTable, country: str, region: str, seller: str,
                                               subtotal: int) -> None:
    with pytest.raises(InvalidInput):
        table.tax_for(country, region, None, subtotal, ON, seller)
