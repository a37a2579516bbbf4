"""Invoice PDFs: real PDFs rendered from the operator's templates in English and Chinese, whose extracted text
(pypdf) shows the number, each line with its amount, the tax line and the total."""

from __future__ import annotations

import io
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pypdf
import pytest

from billing.errors import InvalidInput
from billing.pdf import TEMPLATES_DIR, format_money, format_quantity, render_invoice_html, render_invoice_pdf

SELLER = {"name": "AI Hub GmbH", "address": "Friedrichstraße 68\n10117 Berlin", "country": "DE",
          "tax_id": "DE136695976"}


def english_invoice() -> dict[str, Any]:
    """A German consumer upgraded from Pro to Enterprise on 20 November, with overage: 19% DE VAT."""
    return {
        "number": "AH-2026-000123", "status": "open", "issued_at": "2026-12-01T00:00:00Z",
        "due_at": "2026-12-15T00:00:00Z", "period": "2026-11", "currency": "USD", "seller": SELLER,
        "customer": {"id": "acct_de_1", "name": "Jürgen Müller", "billing_email": "juergen@example.de",
                     "country": "DE", "region": None, "tax_id": None},
        "lines": [
            {"kind": "subscription", "description": "Pro plan, 19 of 30 days of 2026-11", "quantity": "19/30",
             "unit_amount_minor": 2900, "amount_minor": 1837},
            {"kind": "subscription", "description": "Enterprise plan, 11 of 30 days of 2026-11",
             "quantity": "11/30", "unit_amount_minor": 49900, "amount_minor": 18297},
            {"kind": "overage", "description": "Pay-as-you-go calls over the Pro quota", "quantity": "250",
             "unit_amount_minor": 1, "amount_minor": 250},
        ],
        "subtotal_minor": 20384,
        "tax": {"rate": "19", "jurisdiction": "DE VAT", "amount_minor": 3873, "reverse_charge": False, "note": None},
        "total_minor": 24257,
        "usage": {"calls": 5250, "prompt_tokens": 1_234_567, "completion_tokens": 345_678,
                  "by_model": [{"model": "gpt-4o", "calls": 250, "cost_minor": 2210},
                               {"model": "gpt-4o-mini", "calls": 5000, "cost_minor": 120}]},
    }


def chinese_invoice() -> dict[str, Any]:
    """A Chinese business billed in CNY: 6% VAT on services."""
    return {
        "number": "AH-2026-000124", "status": "open", "issued_at": "2026-12-01T00:00:00Z",
        "due_at": "2026-12-15T00:00:00Z", "period": "2026-11", "currency": "CNY", "seller": SELLER,
        "customer": {"id": "acct_cn_1", "name": "北京智能科技有限公司", "billing_email": "caiwu@example.cn",
                     "country": "CN", "region": "BJ", "tax_id": "91110000600037341L"},
        "lines": [
            {"kind": "subscription", "description": "专业版套餐 2026年11月", "quantity": "30/30",
             "unit_amount_minor": 19900, "amount_minor": 19900},
            {"kind": "overage", "description": "超出配额的按量调用", "quantity": "500", "unit_amount_minor": 2,
             "amount_minor": 1000},
        ],
        "subtotal_minor": 20900,
        "tax": {"rate": "6", "jurisdiction": "CN VAT", "amount_minor": 1254, "reverse_charge": False, "note": None},
        "total_minor": 22154,
        "usage": {"calls": 10500, "prompt_tokens": 2_000_000, "completion_tokens": 500_000,
                  "by_model": [{"model": "qwen-max", "calls": 10500, "cost_minor": 15000}]},
    }


def pdf_text(pdf: bytes) -> str:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return re.sub(r"[ \t]+", " ", text)


@pytest.fixture(scope="module")
def english_pdf() -> bytes:
    return render_invoice_pdf(english_invoice(), "en")


@pytest.fixture(scope="module")
def chinese_pdf() -> bytes:
    return render_invoice_pdf(chinese_invoice(), "zh-CN")


def test_the_english_invoice_is_a_pdf_showing_number_lines_tax_and_total(english_pdf: bytes) -> None:
    assert english_pdf.startswith(b"%PDF")
    text = pdf_text(english_pdf)
    assert "INVOICE" in text
    assert "AH-2026-000123" in text
    assert "Pro plan, 19 of 30 days of 2026-11 19/30 $29.00 $18.37" in text
    assert "Enterprise plan, 11 of 30 days of 2026-11 11/30 $499.00 $182.97" in text
    assert "Pay-as-you-go calls over the Pro quota 250 $0.01 $2.50" in text
    assert "Subtotal $203.84" in text
    assert "Tax 19% · DE VAT $38.73" in text
    assert "Total (USD) $242.57" in text
    for label in ("Issue date December 1, 2026", "Due date December 15, 2026", "Billing period November 2026"):
        assert label in text
    assert "API calls: 5,250" in text and "gpt-4o-mini 5,000 $1.20" in text


def test_the_chinese_invoice_has_chinese_labels_and_yuan_amounts(chinese_pdf: bytes) -> None:
    assert chinese_pdf.startswith(b"%PDF")
    text = pdf_text(chinese_pdf)
    for label in ("发票", "发票号码", "开票日期", "到期日", "账单周期", "数量", "单价", "金额", "小计", "税", "合计",
                  "用量摘要"):
        assert label in text, label
    assert "AH-2026-000124" in text
    assert "北京智能科技有限公司" in text
    assert "专业版套餐 2026年11月 30/30 ¥199.00 ¥199.00" in text
    assert "超出配额的按量调用 500 ¥0.02 ¥10.00" in text
    assert "小计 ¥209.00" in text
    assert "税 6% · CN VAT ¥12.54" in text
    assert "合计（CNY） ¥221.54" in text
    assert "开票日期 2026年12月1日" in text and "账单周期 2026年11月" in text


def test_the_cjk_font_is_embedded(chinese_pdf: bytes) -> None:
    reader = pypdf.PdfReader(io.BytesIO(chinese_pdf))
    fonts = reader.pages[0]["/Resources"]["/Font"]
    names = {str(font.get_object()["/BaseFont"]) for font in fonts.values()}
    assert any("CJK" in name or "WenQuanYi" in name for name in names), names


def test_a_reverse_charged_business_gets_the_legal_note() -> None:
    invoice = english_invoice() | {
        "customer": {"id": "acct_fr", "name": "Société Exemple SARL", "billing_email": "compta@example.fr",
                     "country": "FR", "region": None, "tax_id": "FR40303265045"},
        "tax": {"rate": "0", "jurisdiction": "FR VAT", "amount_minor": 0, "reverse_charge": True,
                "note": "Reverse charge: VAT to be accounted for by the recipient, Article 196 Directive 2006/112/EC"},
        "total_minor": 20384,
    }
    text = pdf_text(render_invoice_pdf(invoice, "fr"))   # no French template: English
    assert "Tax (reverse charge) · FR VAT $0.00" in text
    assert "Article 196 Directive 2006/112/EC" in text
    assert "VAT / Tax ID: FR40303265045" in text
    assert "Total (USD) $203.84" in text


@pytest.mark.parametrize(("language", "title"), [("en", "INVOICE"), ("EN-us", "INVOICE"), ("zh", "发票"),
                                                 ("zh_Hans", "发票"), ("ZH-CN", "发票"), ("de", "INVOICE"),
                                                 ("", "INVOICE"), ("../zh", "INVOICE")])
def test_the_template_follows_the_account_language_and_falls_back_to_english(language: str, title: str) -> None:
    html, _ = render_invoice_html(english_invoice(), language)
    assert f"<h1>{title}</h1>" in html


def test_customer_text_is_escaped_not_interpreted() -> None:
    invoice = english_invoice()
    invoice["customer"] = {**invoice["customer"], "name": '<img src="http://example.invalid/x.png">Evil & Co'}
    html, _ = render_invoice_html(invoice, "en")
    assert "&lt;img src=&#34;http://example.invalid/x.png&#34;&gt;Evil &amp; Co" in html
    assert '<img src="http://example.invalid' not in html


def test_an_operator_template_is_used_without_code_changes(tmp_path: Path) -> None:
    (tmp_path / "invoice.css").write_text((TEMPLATES_DIR / "invoice.css").read_text())
    (tmp_path / "invoice.en.html").write_text(
        '<html><head><link rel="stylesheet" href="invoice.css"></head><body>'
        "<h1>Rechnung {{ invoice.number }}</h1>"
        "{% for line in invoice.lines %}<p>{{ line.description }}: {{ line.amount_minor | money }}</p>{% endfor %}"
        "<p>Gesamt {{ invoice.total_minor | money }}</p></body></html>")
    text = pdf_text(render_invoice_pdf(english_invoice(), "zh", templates_dir=tmp_path))  # no zh there: en
    assert "Rechnung AH-2026-000123" in text
    assert "Pay-as-you-go calls over the Pro quota: $2.50" in text
    assert "Gesamt $242.57" in text


def test_an_unknown_currency_is_refused() -> None:
    with pytest.raises(InvalidInput, match="XTS"):
        render_invoice_html(english_invoice() | {"currency": "XTS"}, "en")


@pytest.mark.parametrize(("minor", "currency", "text"), [
    (3451, "USD", "$34.51"), (5, "USD", "$0.05"), (0, "USD", "$0.00"), (-50, "EUR", "-€0.50"),
    (123456789, "USD", "$1,234,567.89"), (1200, "JPY", "¥1,200"), (22154, "CNY", "¥221.54"),
    ("0.4", "USD", "$0.004"), (Decimal("1837"), "usd", "$18.37"),
    (10**20 + 1, "USD", "$1,000,000,000,000,000,000.01"),   # exact: no float on the way
])
def test_money_is_formatted_with_the_currency_exponent(minor: int | str | Decimal, currency: str, text: str) -> None:
    assert format_money(minor, currency) == text


@pytest.mark.parametrize("bad", [12.5, True, "12,5", "NaN", None])
def test_money_refuses_floats_and_garbage(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        format_money(bad, "USD")


@pytest.mark.parametrize(("value", "text"), [("19", "19"), ("5250", "5,250"), (1, "1"), ("0.50", "0.5"),
                                             ("19/30", "19/30"), ("1000/1000", "1,000/1,000")])
def test_quantities(value: str | int, text: str) -> None:
    assert format_quantity(value) == text


@pytest.mark.benchmark
def test_pdf_rate() -> None:
    """PDFs/s over 50 renders of each language (`pytest tests/billing/test_pdf.py -m benchmark -s`)."""
    for language, invoice in (("en", english_invoice()), ("zh", chinese_invoice())):
        render_invoice_pdf(invoice, language)   # warm: font discovery, template compilation
        started = time.perf_counter()
        for _ in range(50):
            render_invoice_pdf(invoice, language)
        elapsed = time.perf_counter() - started
        print(f"\n{language}: 50 invoice PDFs in {elapsed:.2f} s = {50 / elapsed:.1f} PDFs/s")
