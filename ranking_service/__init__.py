"""The ranking stage: a release's ranker, which scores candidates given the user's history, behind a gRPC service."""
