"""HTTP routes: the inference and OpenAI-compatible API, models, health/metrics, admin, and the web pages."""
