"""The billing domain: the system of record (accounts, API keys, subscriptions, boosts, audit log) in a relational
database, and its projection into Redis for the gateway. Plain modules called by the CLI, the API and the worker;
the proxy never imports this package."""
