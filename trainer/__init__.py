"""Funnel trainer: trains the TFRS retrieval and ranking models, exports them, indexes items and publishes a release."""
