"""Generated gRPC stubs for the funnel.v1 API (scripts/run_codegen.py)."""
