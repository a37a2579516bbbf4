"""The plan and model catalog (config/catalog.toml): what each plan allows and what each model costs."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

NAME_RE = re.compile(r"^[a-z0-9_]{1,32}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")   # no '|': reservation records are '|'-separated
OVERAGE_POLICIES = ("hard", "payg_optional", "unlimited")
NANOS_PER_UNIT = 10**9
MINOR_PER_UNIT = 100        # every catalog currency (USD, EUR, CNY, ...) has two decimals
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
MAX_CALLS_PER_REQUEST = 255   # usage rows store calls as UInt8


def _decimal(where: str, value: Any) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"catalog {where}: {value!r} is not a decimal amount") from None
    if amount < 0:
        raise ConfigError(f"catalog {where}: {value!r} must not be negative")
    return amount


@dataclass(frozen=True)
class Plan:
    name: str
    display_name: str
    price_minor: int
    included_calls: int
    unlimited_calls: bool
    rate_per_minute: int
    burst: int
    model_tiers: tuple[str, ...]
    overage: str
    overage_minor_per_call: int
    custom_quota: bool
    support: str
    prices_minor: dict[str, int] | None = None           # monthly price by currency (ISO 4217), minor units
    overage_prices_minor: dict[str, int] | None = None   # per overage call by currency, minor units
    dunning: str = "uncollectible"     # when the last payment retry fails: suspend (free limits) | uncollectible
    max_calls_per_request: int = 1     # n x prompts one request may ask for (400 above it)
    max_output_tokens: int = 0         # cap on max_tokens / max_completion_tokens / max_output_tokens; 0 = none

    def lua_spec(self) -> str:
        """What admit.lua needs: `included,unlimited,rpm,burst,overage,custom,max_calls,max_tokens,tier ...`."""
        return (f"{self.included_calls},{int(self.unlimited_calls)},{self.rate_per_minute},{self.burst},"
                f"{self.overage},{int(self.custom_quota)},{self.max_calls_per_request},{self.max_output_tokens},"
                f"{' '.join(self.model_tiers)}")


@dataclass(frozen=True)
class Model:
    name: str
    tier: str
    upstream: str
    input_nanos_per_token: int
    output_nanos_per_token: int
    nanos_per_call: int = 0            # per image, per speech or transcription call (catalog `per_call`)

    def cost_nanos(self, prompt_tokens: int, completion_tokens: int, calls: int = 1) -> int:
        """List cost in nano-units of the catalog currency (integers only)."""
        return (prompt_tokens * self.input_nanos_per_token + completion_tokens * self.output_nanos_per_token
                + calls * self.nanos_per_call)


@dataclass(frozen=True)
class Catalog:
    version: str
    currency: str
    plans: dict[str, Plan]
    models: dict[str, Model]
    upstreams: tuple[str, ...]

    @property
    def currencies(self) -> tuple[str, ...]:
        """Currencies every plan has a price in: an account may be created in one of these."""
        common = set.intersection(*(set(p.prices_minor or {}) for p in self.plans.values()))
        return tuple(sorted(common))

    def plans_arg(self) -> str:
        """All plans encoded once for admit.lua's ARGV: `|name=spec|name=spec|` (constant for a process).

        admit.lua picks the account's plan with one string.match: cheaper than decoding JSON per call."""
        return "|" + "|".join(f"{name}={plan.lua_spec()}" for name, plan in self.plans.items()) + "|"


def _prices(where: str, table: Any, default: Any, currency: str) -> dict[str, int]:
    """{currency: minor units}; the catalog currency's entry defaults to the plan's single-currency price."""
    if not isinstance(table, dict):
        raise ConfigError(f"catalog {where} must be a table of currency = \"amount\"")
    prices = {currency: int(_decimal(where, default) * MINOR_PER_UNIT)}
    for code, amount in table.items():
        if not CURRENCY_RE.match(code):
            raise ConfigError(f"catalog {where}.{code}: currencies are ISO 4217 codes such as USD or CNY")
        prices[code] = int(_decimal(f"{where}.{code}", amount) * MINOR_PER_UNIT)
    return prices


def _plan(name: str, raw: dict[str, Any], currency: str = "USD") -> Plan:
    where = f"plans.{name}"
    if not NAME_RE.match(name):
        raise ConfigError(f"catalog {where}: plan names are lowercase letters, digits and '_'")
    overage = raw.get("overage", "hard")
    if overage not in OVERAGE_POLICIES:
        raise ConfigError(f"catalog {where}.overage={overage!r} must be one of {OVERAGE_POLICIES}")
    unlimited = bool(raw.get("unlimited_calls", False))
    if not unlimited and not isinstance(raw.get("included_calls"), int):
        raise ConfigError(f"catalog {where}.included_calls must be an integer (or unlimited_calls = true)")
    for needed in ("rate_per_minute", "burst"):
        if not isinstance(raw.get(needed), int) or raw[needed] <= 0:
            raise ConfigError(f"catalog {where}.{needed} must be a positive integer")
    max_calls = raw.get("max_calls_per_request", 1)
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or not 1 <= max_calls <= MAX_CALLS_PER_REQUEST:
        raise ConfigError(f"catalog {where}.max_calls_per_request must be an integer from 1 to "
                          f"{MAX_CALLS_PER_REQUEST}")
    max_tokens = raw.get("max_output_tokens", 0)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ConfigError(f"catalog {where}.max_output_tokens must be an integer, 0 for no cap")
    dunning = raw.get("dunning", "uncollectible")
    if dunning not in ("suspend", "uncollectible"):
        raise ConfigError(f"catalog {where}.dunning={dunning!r} must be suspend or uncollectible")
    if overage == "unlimited" and not unlimited:
        raise ConfigError(f"catalog {where}: overage = \"unlimited\" goes with unlimited_calls = true")
    tiers = raw.get("model_tiers")
    if not isinstance(tiers, list) or not tiers or not all(isinstance(t, str) and NAME_RE.match(t) for t in tiers):
        raise ConfigError(f"catalog {where}.model_tiers must be a non-empty list of lowercase names")
    return Plan(
        name=name, display_name=str(raw.get("display_name", name)),
        price_minor=int(_decimal(f"{where}.price", raw.get("price", "0")) * MINOR_PER_UNIT),
        included_calls=int(raw.get("included_calls", 0)), unlimited_calls=unlimited,
        rate_per_minute=raw["rate_per_minute"], burst=raw["burst"], model_tiers=tuple(tiers),
        overage=overage,
        overage_minor_per_call=int(_decimal(f"{where}.overage_price_per_call",
                                            raw.get("overage_price_per_call", "0")) * MINOR_PER_UNIT),
        custom_quota=bool(raw.get("custom_quota", False)), support=str(raw.get("support", "")),
        max_calls_per_request=max_calls, max_output_tokens=max_tokens, dunning=dunning,
        prices_minor=_prices(f"{where}.prices", raw.get("prices", {}), raw.get("price", "0"), currency),
        overage_prices_minor=_prices(f"{where}.overage_prices_per_call", raw.get("overage_prices_per_call", {}),
                                     raw.get("overage_price_per_call", "0"), currency),
    )


def _model(name: str, raw: dict[str, Any], upstreams: tuple[str, ...], tiers: set[str]) -> Model:
    where = f"models.{name}"
    if not MODEL_RE.match(name):
        raise ConfigError(f"catalog {where}: model names are letters, digits and . _ - : / (at most 128)")
    if raw.get("upstream") not in upstreams:
        raise ConfigError(f"catalog {where}.upstream={raw.get('upstream')!r} is not a declared upstream")
    if raw.get("tier") not in tiers:
        raise ConfigError(f"catalog {where}.tier={raw.get('tier')!r} is not a tier of any plan")
    per_token = Decimal(NANOS_PER_UNIT) / Decimal(10**6)
    return Model(name=name, tier=raw["tier"], upstream=raw["upstream"],
                 input_nanos_per_token=int(_decimal(f"{where}.input_per_1m", raw.get("input_per_1m", "0"))
                                           * per_token),
                 output_nanos_per_token=int(_decimal(f"{where}.output_per_1m", raw.get("output_per_1m", "0"))
                                            * per_token),
                 nanos_per_call=int(_decimal(f"{where}.per_call", raw.get("per_call", "0")) * NANOS_PER_UNIT))


def load_catalog(path: Path) -> Catalog:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"catalog file {path} does not exist (AIHUB_CATALOG)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"catalog file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"catalog file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"catalog file {path} is not valid TOML: {exc}") from None
    if not raw.get("plans"):
        raise ConfigError(f"catalog {path} declares no plans")
    currency = str(raw.get("currency", "USD"))
    plans = {name: _plan(name, body, currency) for name, body in raw["plans"].items()}
    upstreams = tuple(raw.get("upstreams", {}).keys())
    for upstream in upstreams:
        if not NAME_RE.match(upstream):   # also names AIHUB_UPSTREAM_<NAME>_URL
            raise ConfigError(f"catalog upstreams.{upstream}: names are lowercase letters, digits and '_'")
    if not upstreams:
        raise ConfigError(f"catalog {path} declares no [upstreams]")
    tiers = {tier for plan in plans.values() for tier in plan.model_tiers}
    models = {name: _model(name, body, upstreams, tiers) for name, body in raw.get("models", {}).items()}
    return Catalog(version=str(raw.get("version", "")), currency=str(raw.get("currency", "USD")),
                   plans=plans, models=models, upstreams=upstreams)
