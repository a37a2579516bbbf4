"""The API role: HTTP endpoints that need the system of record (provider webhooks now; the management API and
dashboard later). Never imported by the proxy; `make up` mounts it on the gateway's port."""
