"""One module per resource of the management API, each with a FastAPI `router` (mounted under `/api/v1`)."""
