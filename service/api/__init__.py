"""HTTP routes of the FastAPI service, one module per resource."""
