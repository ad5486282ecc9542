"""The delivery engine: outbox claims, SMTP connection pools, retries and the worker."""
