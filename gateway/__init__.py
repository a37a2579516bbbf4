"""aihub-billing gateway: the quota-enforcing reverse proxy in front of OpenAI-compatible model APIs."""
