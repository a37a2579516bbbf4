"""Billing worker: drains the usage streams into ClickHouse, answers usage queries, runs Dramatiq actors."""
