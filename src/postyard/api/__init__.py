"""The REST API (FastAPI): one router per resource, schemas beside them."""
