"""The three-hop pass-through floor: Funnel's gateway, retrieval and ranking services, gRPC topology, batching,
validation and interceptors unchanged, with stage releases that answer precomputed candidates and scores instead of
running the query tower, ScaNN and the ranker. Funnel over this floor is the share of its cost that is the models'.

    python -m bench.passthrough.retrieval --artifact-root DIR [--address HOST:PORT]   (and .ranking)

Both read only the release's small files (the popular items, the item ids), so they load in a second.
"""

MODULES = {"retrieval": "bench.passthrough.retrieval", "ranking": "bench.passthrough.ranking"}  # no TensorFlow here
