"""Money is integer nano-units of the catalog currency; it is shown as Decimal, never float."""

from __future__ import annotations

from decimal import Decimal

NANOS_PER_UNIT = 1_000_000_000


def nanos_to_decimal(nanos: int) -> Decimal:
    """Exact: 1_234_500_000 -> Decimal('1.234500000')."""
    return Decimal(int(nanos)).scaleb(-9)


def format_money(nanos: int, places: int = 9) -> str:
    """A plain decimal string (no exponent), rounded half-even to `places` decimals."""
    return f"{nanos_to_decimal(nanos).quantize(Decimal(1).scaleb(-places)):f}"
