"""The options of the retry budget and of --only-configured-endpoints: defaults, sources, validation."""

from pathlib import Path

import pytest

from proxy.config import load
from proxy.errors import ConfigError

BASE_ENV = {"DATABRICKS_HOST": "my.cloud.databricks.com", "DATABRICKS_CLIENT_ID": "sp", "DATABRICKS_CLIENT_SECRET": "s"}


def test_defaults_absorb_a_short_burst_within_a_shared_budget(tmp_path: Path) -> None:
    settings = load({}, environ=BASE_ENV, home=tmp_path)
    assert (settings.retry_attempts, settings.retry_ratio, settings.min_retries_per_second) == (5, 0.2, 5.0)
    assert settings.only_configured_endpoints is False


def test_budget_and_hardening_from_flags_environment_and_file(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("only_configured_endpoints: true\nendpoints: [fraud-ro]\nretry_ratio: 0.5\n")
    env = {**BASE_ENV, "SERVING_SIDECAR_MIN_RETRIES_PER_SECOND": "2"}
    settings = load({"config": str(config_file)}, environ=env, home=tmp_path)
    assert (settings.only_configured_endpoints, settings.endpoints) == (True, ("fraud-ro",))
    assert (settings.retry_ratio, settings.min_retries_per_second) == (0.5, 2.0)
    assert load({"retry_ratio": 0.0}, environ=BASE_ENV, home=tmp_path).retry_ratio == 0.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"only_configured_endpoints": True}, "only-configured-endpoints: name the endpoints"),
        ({"retry_ratio": -0.1}, "retry-ratio"),
        ({"min_retries_per_second": -1.0}, "min-retries-per-second"),
    ],
)
def test_errors_name_the_option(tmp_path: Path, flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(flags, environ=BASE_ENV, home=tmp_path)
