"""The relational store: tables (models), engine and sessions (engine), schema migrations (migrate)."""
