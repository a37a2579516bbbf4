"""`aihub member ...`: an account's members from the command line (the operator's way to give an account its first
owner, whose token then logs in to the dashboard and the management API).

  aihub member add ACCOUNT EMAIL [--role owner]   a member and its token (shown once)
  aihub member list ACCOUNT                       the account's members
  aihub member remove ACCOUNT MEMBER_ID           the member's token stops working at once
  aihub member token ACCOUNT MEMBER_ID            a new token for a member (the old one stops working)

`--json` on each. Errors: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson

from billing.db.models import MEMBER_ROLES
from billing.errors import BillingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aihub member", description="An account's members (teams).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("account")
        return p

    add = action("add", "add a member; its token is printed once")
    add.add_argument("email")
    add.add_argument("--role", default="owner", choices=MEMBER_ROLES)
    action("list", "the account's members")
    remove = action("remove", "remove a member (its token stops working)")
    remove.add_argument("member_id")
    token = action("token", "issue a new token for a member (the old one stops working)")
    token.add_argument("member_id")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from billing.members import MemberService
    from billing.store import open_accounts
    try:
        store = open_accounts(dict(os.environ), project=False)
    except BillingError as exc:
        sys.stderr.write(f"aihub: {exc.message}\n")
        return 2
    try:
        members = MemberService(store.accounts.sessions)
        result: object
        if args.action == "add":
            issued = members.add_member(args.account, args.email, args.role, actor="cli")
            result = {"member": issued.member, "token": issued.token}
        elif args.action == "list":
            result = members.list_members(args.account)
        elif args.action == "remove":
            result = members.remove_member(args.account, args.member_id, actor="cli")
        else:
            issued = members.rotate_token(args.account, args.member_id, actor="cli")
            result = {"member": issued.member, "token": issued.token}
    except BillingError as exc:
        sys.stderr.write(f"aihub: {exc.message}\n")
        return 2
    finally:
        store.close()
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        rows: list[dict[str, Any]] = result if isinstance(result, list) else [result]   # type: ignore[list-item]
        for row in rows:
            member = row.get("member", row)
            line = f"{member['id']}  {member['role']:<9}  {member['email']}  {member['status']}"
            if "token" in row:
                line += f"\n  token (shown once): {row['token']}"
            sys.stdout.write(line + "\n")
    return 0
