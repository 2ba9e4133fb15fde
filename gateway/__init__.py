"""The gateway: chooses the release for each request and fans it through retrieval then ranking."""
