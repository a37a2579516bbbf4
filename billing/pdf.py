"""Invoice PDFs rendered from operator-editable templates: `render_invoice_pdf(invoice, language) -> bytes`.

A plain function of an invoice dict (the shape the invoice code exports: number, status, dates, seller, customer,
lines, subtotal, tax, total and usage summary, money in integer minor units); no database access.

Templates: `config/invoice_templates/invoice.<language>.html` (Jinja2, autoescaped) plus the shared
`invoice.css`, so an operator changes wording, layout or styling by editing files, not code. The language is the
account's (`zh-CN`, `zh_Hans` and `ZH` all pick `invoice.zh.html`); a language without a template falls back to
English. Templates are re-read when their files change. A template may reference files next to it (stylesheets,
a logo image) by relative URL; only `file:` and `data:` URLs are fetched, never the network.

Filters available to templates: `money` (integer minor units in the invoice's currency, e.g. 3451 -> `$34.51`,
1200 JPY -> `¥1,200`; decimal arithmetic only, never float), `quantity` (`"5250"` -> `5,250`; a fraction of the
month such as `"19/30"` stays one), `number`, `rate` (`"19"` -> `19%`), `date` (ISO timestamp -> `December 1, 2026`
/ `2026年12月1日`) and `period` (`2026-11` -> `November 2026` / `2026年11月`).

Engine: WeasyPrint (HTML + CSS -> PDF). The templates are HTML, which WeasyPrint lays out with real CSS paged
media (page size, margins, running footer with page numbers, table headers repeated across pages), it is actively
maintained (BSD, regular releases), and its only native needs are Pango/HarfBuzz/fontconfig, which Debian ships
(`scripts/ensure-fonts` installs them). Text is shaped by Pango and fonts come from fontconfig, so the Chinese
template just names `Noto Sans CJK SC` (Debian `fonts-noto-cjk`) and WeasyPrint embeds a subset of it (with
HarfBuzz's subsetter, `libharfbuzz-subset0`: ~0.25 s per Chinese invoice here, against ~10 s with WeasyPrint's
fontTools fallback on the 20 MB CJK collection).
The PDF carries ToUnicode maps, so text extraction (pypdf, pdftotext) returns the Chinese labels. Alternatives
considered: fpdf2 (pure Python, but its HTML subset has no real CSS, so operators could not restyle templates) and
xhtml2pdf (CSS 2.1 subset on ReportLab, weaker CJK line breaking).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import pass_context
from jinja2.runtime import Context

from billing.errors import InvalidInput
from gateway.settings import ROOT

TEMPLATES_DIR = ROOT / "config" / "invoice_templates"
DEFAULT_LANGUAGE = "en"
_LANGUAGE_RE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{1,8})*")

# ISO 4217 minor-unit exponent and the symbol printed before the amount.
CURRENCIES: dict[str, tuple[int, str]] = {
    "USD": (2, "$"),
    "EUR": (2, "€"),
    "GBP": (2, "£"),
    "CNY": (2, "¥"),
    "JPY": (0, "¥"),
    "KRW": (0, "₩"),
    "HKD": (2, "HK$"),
    "SGD": (2, "S$"),
    "CAD": (2, "CA$"),
    "AUD": (2, "A$"),
    "CHF": (2, "CHF "),
    "INR": (2, "₹"),
}

_MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December")


def render_invoice_pdf(invoice: Mapping[str, Any], language: str, templates_dir: Path | None = None) -> bytes:
    """The invoice as PDF bytes, laid out by `invoice.<language>.html` in `templates_dir` (default
    `config/invoice_templates`), falling back to English. Raises InvalidInput for an unknown currency or a
    malformed amount, date or period."""
    html, base_url = render_invoice_html(invoice, language, templates_dir)
    # WeasyPrint is imported here so that importing billing (the CLI, the worker) does not load Pango.
    import weasyprint

    fetcher = weasyprint.urls.URLFetcher(allowed_protocols={"file", "data"})
    document = weasyprint.HTML(string=html, base_url=base_url, url_fetcher=fetcher)
    pdf = document.write_pdf()
    assert isinstance(pdf, bytes)
    return pdf


def render_invoice_html(
    invoice: Mapping[str, Any], language: str, templates_dir: Path | None = None
) -> tuple[str, str]:
    """The filled-in HTML and the base URL its relative links resolve against (the templates directory)."""
    directory = (templates_dir or TEMPLATES_DIR).resolve()
    env = _environment(directory)
    lang, template = _template(env, language)
    currency = str(invoice.get("currency", "")).upper()
    if currency not in CURRENCIES:
        raise InvalidInput(f"invoice {invoice.get('number')}: currency {currency!r} has no known minor unit")
    html = template.render(invoice=invoice, lang=lang, currency=currency)
    return html, directory.as_uri() + "/"


def format_money(minor: int | str | Decimal, currency: str) -> str:
    """Integer (or decimal, for sub-cent unit prices) minor units as `$1,234.56`, `-€0.50`, `¥1,200` (JPY)."""
    exponent, symbol = CURRENCIES[currency.upper()]
    value = _decimal(minor).scaleb(-exponent)
    places = max(exponent, -value.normalize().as_tuple().exponent)  # type: ignore[operator]
    text = f"{abs(value):,.{places}f}"
    return f"{'-' if value < 0 else ''}{symbol}{text}"


def format_quantity(value: int | str | Decimal) -> str:
    """`"19"` -> `19`, `"5250"` -> `5,250`, `"0.50"` -> `0.5`; a fraction of the month stays one: `"19/30"`."""
    if isinstance(value, str) and value.count("/") == 1:
        numerator, denominator = value.split("/")
        return f"{format_quantity(numerator.strip())}/{format_quantity(denominator.strip())}"
    number = _decimal(value)
    if number == number.to_integral_value():
        return f"{number.to_integral_value():,}"
    return f"{number.normalize():,f}"


def format_rate(value: int | str | Decimal | None) -> str:
    return "" if value is None else f"{format_quantity(value)}%"


def format_date(value: str | datetime, language: str) -> str:
    when = value if isinstance(value, datetime) else _parse_datetime(value)
    if language == "zh":
        return f"{when.year}年{when.month}月{when.day}日"
    return f"{_MONTHS_EN[when.month - 1]} {when.day}, {when.year}"


def format_period(value: str, language: str) -> str:
    match = re.fullmatch(r"(\d{4})-(\d{2})", value)
    if not match or not 1 <= int(match[2]) <= 12:
        raise InvalidInput(f"invoice period {value!r} is not YYYY-MM")
    year, month = int(match[1]), int(match[2])
    return f"{year}年{month}月" if language == "zh" else f"{_MONTHS_EN[month - 1]} {year}"


def _decimal(value: int | str | Decimal) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise InvalidInput(f"expected an integer or decimal string, got {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise InvalidInput(f"expected an integer or decimal string, got {value!r}") from None
    if not number.is_finite():
        raise InvalidInput(f"expected a finite number, got {value!r}")
    return number


def _parse_datetime(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"expected an ISO 8601 timestamp, got {value!r}") from None


def _language_candidates(language: str) -> list[str]:
    tag = (language or "").strip().lower().replace("_", "-")
    candidates = []
    if _LANGUAGE_RE.fullmatch(tag):
        candidates.append(tag)
        primary = tag.split("-")[0]
        if primary != tag:
            candidates.append(primary)
    if DEFAULT_LANGUAGE not in candidates:
        candidates.append(DEFAULT_LANGUAGE)
    return candidates


def _template(env: jinja2.Environment, language: str) -> tuple[str, jinja2.Template]:
    for lang in _language_candidates(language):
        try:
            return lang.split("-")[0], env.get_template(f"invoice.{lang}.html")
        except jinja2.TemplateNotFound:
            continue
    raise InvalidInput(f"no invoice template invoice.{DEFAULT_LANGUAGE}.html in {env.loader.searchpath}")  # type: ignore[union-attr]


@lru_cache(maxsize=8)
def _environment(directory: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=_money_filter, quantity=format_quantity, number=format_quantity, rate=format_rate,
                       date=_date_filter, period=_period_filter)
    return env


@pass_context
def _money_filter(context: Context, minor: int | str | Decimal | None, currency: str | None = None) -> str:
    """Minor units in the invoice's currency, or in `currency` (list costs are in the catalog's currency)."""
    return "" if minor is None else format_money(minor, currency or str(context["currency"]))


@pass_context
def _date_filter(context: Context, value: str | datetime | None) -> str:
    return "" if value is None else format_date(value, str(context["lang"]))


@pass_context
def _period_filter(context: Context, value: str) -> str:
    return format_period(value, str(context["lang"]))
