"""Who may do what: each permission and the member roles that have it. The operator has every permission; an
API key alone has only `usage:read` on its own account. docs/api.md's role table is generated from ROLE_TABLE
(`python -m api.permissions`), and tests check each endpoint against it."""

from __future__ import annotations

from billing.db.models import MEMBER_ROLES

EVERYONE = frozenset(MEMBER_ROLES)
MANAGERS = frozenset({"owner", "admin"})
BILLING = frozenset({"owner", "admin", "billing"})

# permission -> (member roles that have it, what it covers)
ROLE_TABLE: dict[str, tuple[frozenset[str], str]] = {
    "account:read": (EVERYONE, "the account, its plan and settings"),
    "usage:read": (EVERYONE, "usage, forecast, CSV export (an API key too, for its own account)"),
    "subscription:write": (BILLING, "change plan, cancel, custom quota, boosts, overage"),
    "invoices:read": (BILLING | {"viewer"}, "invoices and their PDFs"),
    "invoices:pay": (BILLING, "pay an open invoice now"),
    "payments:read": (BILLING, "payment methods and payment history"),
    "payments:write": (BILLING, "add and remove payment methods"),
    "settings:write": (BILLING, "billing email, language, tax id and country, warning levels, webhook URL"),
    "keys:read": (EVERYONE, "the account's API keys (never the key itself)"),
    "keys:write": (MANAGERS | {"developer"}, "create and revoke keys (a developer: only the keys it created)"),
    "members:read": (EVERYONE, "members and invitations"),
    "members:write": (MANAGERS, "invite, remove, change roles (owners only by an owner)"),
    "notifications:read": (EVERYONE, "notifications and webhook deliveries"),
    "notifications:write": (MANAGERS, "redeliver a webhook"),
    "operator": (frozenset(), "all accounts, void, refunds, revenue report, KPIs, anomalies, audit log"),
}
PERMISSIONS = tuple(ROLE_TABLE)
API_KEY_PERMISSIONS = frozenset({"usage:read"})


def allowed(role: str, permission: str) -> bool:
    """True if a caller with `role` ('operator', 'api_key' or a member role) has `permission`."""
    if permission not in ROLE_TABLE:
        raise KeyError(permission)
    if role == "operator":
        return True
    if role == "api_key":
        return permission in API_KEY_PERMISSIONS
    return role in ROLE_TABLE[permission][0]


def markdown_table() -> str:
    head = "| permission | " + " | ".join(MEMBER_ROLES) + " | API key | covers |"
    rule = "|" + "---|" * (len(MEMBER_ROLES) + 3)
    rows = [f"| `{p}` | " + " | ".join("yes" if r in roles else "" for r in MEMBER_ROLES)
            + f" | {'yes' if p in API_KEY_PERMISSIONS else ''} | {covers} |"
            for p, (roles, covers) in ROLE_TABLE.items()]
    return "\n".join([head, rule, *rows])


if __name__ == "__main__":
    print(markdown_table())
