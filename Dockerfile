# One image, three roles: `python -m gateway serve` (proxy), `python -m gateway.multi_roles api-worker --port 8081`
# (management API, webhooks, dashboard, with the worker), `python -m billing_worker worker` (worker alone).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.lock
COPY gateway gateway
COPY api api
COPY billing billing
COPY billing_worker billing_worker
COPY fakes fakes
COPY lua lua
COPY clickhouse clickhouse
COPY config config
ENV PYTHONPATH=/app AIHUB_HOST=0.0.0.0
EXPOSE 8080
CMD ["python", "-m", "gateway", "serve"]
