"""The serving runtime every service shares: release manager, server bootstrap, interceptors, config, validation."""
