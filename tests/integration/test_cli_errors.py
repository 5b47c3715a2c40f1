"""Bad input on the command line or in the configuration: one line, a documented exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import ocilayout as ol
from tests.integration.ketch_cli import ketch


@pytest.fixture(scope="module")
def small_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "layout"
    ol.write_oci_layout(root, "t", [ol.tar_bytes([ol.file("a", b"hello")])])
    return root


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--retries", "-1"),
        ("--timeout", "-1"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--compression-level", "99"),
        ("--workers", "-3"),
        ("--health-check-interval", "-5"),
        ("--source-date-epoch", "-1"),
        ("--chunk-size", "3"),
        ("--chunk-size", "99G"),
    ],
)
def test_a_number_out_of_range_is_a_usage_error(
    small_layout: Path, tmp_path: Path, option: str, value: str
) -> None:
    result = ketch(
        "convert", f"oci:{small_layout}:t", f"oci:{tmp_path / 'k'}:t", option, value, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and option in result.stderr
    assert not (tmp_path / "k").exists()


def test_a_number_out_of_range_in_the_configuration_is_a_usage_error(
    small_layout: Path, tmp_path: Path
) -> None:
    config = tmp_path / "ketch.toml"
    config.write_text("[registry]\ntimeout = -5\n")
    result = ketch(
        "--config",
        str(config),
        "convert",
        f"oci:{small_layout}:t",
        f"oci:{tmp_path / 'k'}:t",
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"{config}: registry.timeout" in result.stderr
