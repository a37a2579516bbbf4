"""`make up`'s demo members: an owner for each demo account that has none, with a dashboard token printed once."""

from __future__ import annotations

from collections.abc import Mapping

from billing.errors import BillingError


def seed_owners(env: Mapping[str, str], account_ids: list[str]) -> list[tuple[str, str]]:
    """(account, member token) for each demo account given an owner now (none when it had one)."""
    from billing.members import MemberService
    from billing.store import open_accounts
    store = open_accounts(env)
    try:
        members = MemberService(store.accounts.sessions)
        made = []
        for account_id in account_ids:
            try:
                if members.list_members(account_id):
                    continue
                issued = members.add_member(account_id, f"owner@{account_id}.example", "owner", actor="make-up")
            except BillingError:
                continue
            made.append((account_id, issued.token))
        return made
    finally:
        store.close()


def banner(url: str, operator_token: str | None, owners: list[tuple[str, str]]) -> str:
    lines = [f"Management API: {url}/api/docs   Dashboard: {url}/dashboard"]
    if operator_token:
        lines.append(f"  operator token (this run only): {operator_token}")
    lines += [f"  dashboard token, owner of {account}: {token}" for account, token in owners]
    if not owners:
        lines.append("  (demo owners' tokens were shown when first made: `aihub member list demopro` gives the "
                     "owner's id, `aihub member token demopro MEMBER_ID` a new token)")
    return "\n".join(lines) + "\n"
