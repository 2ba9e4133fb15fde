"""Config: flags over environment over defaults; a missing required value names its variable."""

from __future__ import annotations

import pytest

from funnel.serving.config import ConfigError, parse_config
from gateway.server import GatewayServiceConfig


def test_precedence_flag_env_default() -> None:
    env = {"FUNNEL_ARTIFACT_ROOT": "/env/root", "FUNNEL_RANKING_TIMEOUT": "0.25"}
    config = parse_config(GatewayServiceConfig, ["--artifact-root", "/flag/root"], env)
    assert config.artifact_root == "/flag/root"
    assert config.ranking_timeout == 0.25
    assert config.address == "127.0.0.1:50051"


def test_missing_required_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FUNNEL_ARTIFACT_ROOT"):
        parse_config(GatewayServiceConfig, [], {})


def test_malformed_value_says_what_was_expected() -> None:
    with pytest.raises(ConfigError, match=r"FUNNEL_MAX_WORKERS: expected int, got 'many'"):
        parse_config(GatewayServiceConfig, [], {"FUNNEL_ARTIFACT_ROOT": "/r", "FUNNEL_MAX_WORKERS": "many"})


def test_config_is_frozen() -> None:
    config = parse_config(GatewayServiceConfig, [], {"FUNNEL_ARTIFACT_ROOT": "/r"})
    with pytest.raises(AttributeError):
        config.address = "x"  # type: ignore[misc]
