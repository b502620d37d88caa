"""collectors/: the Collector config and the compose file parse and are wired correctly.

No Docker needed: these read the files as the Collector and Compose would, and check
what the README promises. The end-to-end run against the stack is opt-in
(``TRACEDPOOL_TEST_OTLP_ENDPOINT``, tests/test_export.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from test_export import ENV_TEST_OTLP_ENDPOINT

from tracedpool._telemetry import names as N

yaml = pytest.importorskip("yaml")

COLLECTORS = Path(__file__).resolve().parent.parent / "collectors"
KINDS = ("receivers", "processors", "exporters")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COLLECTORS / "otel-collector.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COLLECTORS / "compose.yaml").read_text())
    return loaded


def _pipeline(config: dict[str, Any]) -> dict[str, list[str]]:
    traces: dict[str, list[str]] = config["service"]["pipelines"]["traces"]
    return traces


def test_every_component_a_pipeline_names_is_defined(config: dict[str, Any]) -> None:
    """Each receiver, processor, exporter and extension the service uses is configured
    (the Collector refuses to start otherwise), and none is configured but unused."""
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for pipeline in config["service"]["pipelines"].values():
        for kind in KINDS:
            assert pipeline[kind], f"a pipeline with no {kind}"
            used[kind] |= set(pipeline[kind])
    for kind in KINDS:
        assert used[kind] == set(config[kind]), kind
    assert set(config["service"].get("extensions", [])) == set(config.get("extensions", {}))


def test_otlp_in_on_4317_and_4318_on_all_interfaces(config: dict[str, Any]) -> None:
    """OTLP gRPC on 4317 and HTTP on 4318, bound to 0.0.0.0 (reachable from the host)."""
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert _pipeline(config)["receivers"] == ["otlp"]


def test_processors_run_memory_limiter_first_and_batch_last(config: dict[str, Any]) -> None:
    """memory_limiter first (refuse before buffering), tail sampling, then batch."""
    assert _pipeline(config)["processors"] == ["memory_limiter", "tail_sampling", "batch"]
    limiter = config["processors"]["memory_limiter"]
    assert limiter["check_interval"] and 0 < limiter["limit_percentage"] <= 90


def test_tail_sampling_keeps_every_error_and_stall_and_samples_the_rest(
    config: dict[str, Any],
) -> None:
    """Policies: status ERROR, the stall span or event (tracedpool's own names), and a
    probabilistic share of the rest."""
    sampling = config["processors"]["tail_sampling"]
    policies = {p["type"]: p for p in sampling["policies"]}
    assert len(policies) == len(sampling["policies"])  # one policy of each kind here
    for policy in sampling["policies"]:
        assert set(policy) == {"name", "type", policy["type"]}, policy["name"]

    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]

    ottl = policies["ottl_condition"]["ottl_condition"]
    names = {
        kind: {re.fullmatch(r'name == "([^"]+)"', c).group(1) for c in ottl[kind]}  # type: ignore[union-attr]
        for kind in ("span", "spanevent")
    }
    assert names == {"span": {N.SPAN_STALL}, "spanevent": {N.EVENT_STALL}}

    pct = policies["probabilistic"]["probabilistic"]["sampling_percentage"]
    assert 0 < pct < 100
    assert sampling["decision_wait"].endswith("s")


def test_collector_exports_to_the_jaeger_compose_service(
    config: dict[str, Any], compose: dict[str, Any]
) -> None:
    """The OTLP exporter's host is the compose service running Jaeger, on its gRPC port."""
    (name,) = _pipeline(config)["exporters"]
    assert name.split("/")[0] == "otlp"
    host, port = config["exporters"][name]["endpoint"].rsplit(":", 1)
    assert host in compose["services"] and port == "4317"
    assert compose["services"][host]["image"].startswith("jaegertracing/jaeger:2.")
    assert "4317" in compose["services"][host]["expose"]


def test_compose_pins_images_mounts_the_config_and_publishes_the_ports(
    compose: dict[str, Any],
) -> None:
    """Pinned tags (no latest), the config mounted where the command reads it, OTLP on
    the collector's 4317/4318 and the Jaeger UI on 16686."""
    services = compose["services"]
    jaeger, collector = services["jaeger"], services["otel-collector"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"])
    assert re.fullmatch(r"otel/opentelemetry-collector-contrib:0\.\d+\.\d+", collector["image"])

    (arg,) = collector["command"]
    config_path = arg.removeprefix("--config=")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in collector["volumes"]}
    assert mounts[config_path] == "./otel-collector.yaml"
    assert (COLLECTORS / mounts[config_path]).is_file()

    assert {"4317:4317", "4318:4318"} <= set(collector["ports"])
    assert "16686:16686" in jaeger["ports"]
    assert "jaeger" in collector["depends_on"]


def test_readme_names_the_files_and_images(compose: dict[str, Any]) -> None:
    """collectors/README.md names both files and the exact image tags in compose.yaml."""
    readme = (COLLECTORS / "README.md").read_text()
    for name in ("otel-collector.yaml", "compose.yaml", ENV_TEST_OTLP_ENDPOINT):
        assert name in readme
    for service in compose["services"].values():
        assert service["image"] in readme
