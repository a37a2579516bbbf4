"""Sends an invitation to join an account by email (SMTP from billing.notifications_settings.SmtpSettings).

The token is in the message and nowhere else after the request: it is not stored (only its SHA-256) and not in
the notification log. `send_invite` returns False when SMTP is not configured (the inviter then passes the token,
returned once by the API, on); an SMTP failure raises InviteMailError (the invitation still stands)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from billing import mail
from billing.errors import BillingError
from billing.notifications_settings import SmtpSettings


class InviteMailError(BillingError):
    status = 502
    code = "invite_email_failed"


def invite_message(sender: str, email: str, account_name: str, role: str, token: str, url: str,
                   language: str = "en") -> EmailMessage:
    if language.startswith("zh"):
        subject = f"[AI Hub] 邀请您加入 {account_name}"
        text = (f"您被邀请以“{role}”角色加入 AI Hub 账户 {account_name}。\n\n"
                f"在 {url}/dashboard 打开控制台，选择“接受邀请”，粘贴以下一次性令牌（7 天内有效）：\n\n{token}\n\n"
                "如非预期，请忽略此邮件。\n\n—— AI Hub")
    else:
        subject = f"[AI Hub] You are invited to {account_name}"
        text = (f"You have been invited to the AI Hub account {account_name} as {role}.\n\n"
                f"Open {url}/dashboard, choose \"Accept an invitation\" and paste this one-time token "
                f"(valid for 7 days):\n\n{token}\n\nIf you did not expect this, ignore this message.\n\n-- AI Hub")
    return mail.new_message(sender, email, subject, text)


def send_invite(smtp: SmtpSettings | None, email: str, account_name: str, role: str, token: str, url: str,
                language: str = "en") -> bool:
    if smtp is None:
        return False
    try:
        mail.send(smtp, invite_message(smtp.sender, email, account_name, role, token, url, language))
    except (OSError, smtplib.SMTPException) as exc:
        raise InviteMailError(f"The invitation was made but its email could not be sent: {exc}") from None
    return True
