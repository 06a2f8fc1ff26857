"""The HTTP API (FastAPI). ``tumorseg.api.main:create_app`` wires it together."""
