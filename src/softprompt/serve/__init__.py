"""The OpenAI-compatible HTTP server: a thin pydantic/FastAPI shell over MultiTaskPredictor."""
