"""The engine's HTTP routes, one module per concern (``tgi``, ``openai``, ``ops``); ``create_app`` assembles them."""
