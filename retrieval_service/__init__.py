"""The retrieval stage: a release's query tower and ScaNN index behind a gRPC service."""
