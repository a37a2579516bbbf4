"""Collecting invoices: a provider interface (provider.py), Stripe (stripe_provider.py), bank transfer
(bank_transfer.py) and the service that records every attempt in the system of record (service.py)."""
