"""The REST intake: FastAPI app, models, problem+json, publisher, credentials, bounds."""
