"""Config: defaults, file + env layering, and every validator rejecting something, reported by path."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from evolvd.cli import EXIT_INVALID, main
from evolvd.config import EvolvdConfig
from evolvd.config_file import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "evolvd.yaml"
    path.write_text(text)
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(e) for e in info.value.errors]


def test_defaults_are_a_valid_config() -> None:
    config = load_config(None)
    assert config.kafka.is_embedded
    assert config.buffer_path == config.data_dir / "buffer.duckdb"
    assert config.admin.is_loopback


def test_shipped_example_file_is_valid() -> None:
    config = load_config(REPO / "evolvd.yaml")
    assert config.kafka.topic == "evolvd.prompts"


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == EvolvdConfig()


def test_wrong_type_unknown_key_and_out_of_range_are_each_reported_by_path_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "kafka:\n"
        "  topic: prompts\n"
        "  session_timeout_ms: soon\n"  # line 3: wrong type
        "  bootstrap_server: x:9092\n"  # line 4: unknown key (typo)
        "ingest:\n"
        "  max_message_bytes: 10\n",  # line 6: below the minimum
    )
    errors = errors_of(path)
    assert any(e.startswith(f"{path}:3: kafka.session_timeout_ms:") and "integer" in e for e in errors)
    assert any(e.startswith(f"{path}:4: kafka.bootstrap_server:") and "unknown key" in e for e in errors)
    assert any(e.startswith(f"{path}:6: ingest.max_message_bytes:") and "greater than" in e for e in errors)
    assert len(errors) == 3


def test_unknown_top_level_key_is_an_error(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, "kafak:\n  topic: x\n"))
    assert errors == [
        f"{tmp_path / 'evolvd.yaml'}:1: kafak: unknown key (not a field here; check the spelling)"
    ]


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("ingest:\n  backlog_high_watermark: 10\n  backlog_low_watermark: 10\n", "ingest", "below"),
        ("kafka:\n  session_timeout_ms: 6000\n  heartbeat_interval_ms: 3000\n", "kafka", "a third"),
        ("kafka:\n  security_protocol: SASL_SSL\n", "kafka", "sasl_mechanism"),
        ("kafka:\n  auto_offset_reset: middle\n", "kafka.auto_offset_reset", "'earliest' or 'latest'"),
        ("kafka:\n  topic: 'has space'\n", "kafka.topic", "pattern"),
        ("admin:\n  port: 70000\n", "admin.port", "less than or equal"),
        ("logging:\n  level: LOUD\n", "logging.level", "'DEBUG'"),
        ("buffer:\n  backend: postgres\n", "buffer", "needs buffer.postgres_url"),
        ("buffer:\n  backend: postgres\n  postgres_url: postgresql://u:pw@db/e\n", "buffer", "$PGPASSWORD"),
        ("role: train\n", "role", "'all', 'ingest', 'label', 'loop' or 'gateway'"),
        ("training:\n  launcher: ray\n", "training", "needs training.ray_address"),
        ("training:\n  launcher: slurm\n", "training.launcher", "'local', 'torchrun' or 'ray'"),
        ("serving:\n  adapter_dir: /srv/adapters\n", "serving", "replicas you run"),
        (
            "serving:\n  mode: external\n  url: http://r:8000\n  replica_urls: [http://a:8000]\n",
            "serving",
            "needs serving.adapter_dir",
        ),
        ("serving:\n  health_path: readiness\n", "serving.health_path", "pattern"),
    ],
)
def test_each_validator_rejects(tmp_path: Path, text: str, path: str, message: str) -> None:
    errors = errors_of(write(tmp_path, text))
    assert len(errors) == 1
    assert f": {path}: " in errors[0]
    assert message in errors[0]


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, "kafka:\n  topic: [unclosed\n  group_id: g\n"))
    assert len(errors) == 1
    assert "invalid YAML" in errors[0]
    assert errors[0].startswith(f"{tmp_path / 'evolvd.yaml'}:")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, "- a\n- b\n"))
    assert "top level must be a mapping" in errors[0]


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLVD_KAFKA__TOPIC", "from-env")
    monkeypatch.setenv("EVOLVD_INGEST__BATCH_MAX_MESSAGES", "17")
    config = load_config(write(tmp_path, "kafka:\n  topic: from-file\n  group_id: g\n"))
    assert config.kafka.topic == "from-env"
    assert config.kafka.group_id == "g"  # the rest of the section still comes from the file
    assert config.ingest.batch_max_messages == 17


def test_bad_environment_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLVD_ADMIN__PORT", "eighty")
    errors = errors_of(write(tmp_path, ""))
    assert errors[0].startswith("env EVOLVD_ADMIN__PORT: admin.port:")


def test_config_check_command_reports_and_exits_non_zero(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  topik: x\n  session_timeout_ms: -1\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == EXIT_INVALID
    assert f"error: {path}:2: kafka.topik: unknown key" in result.output
    assert f"error: {path}:3: kafka.session_timeout_ms:" in result.output


def test_config_check_command_accepts_a_good_file() -> None:
    result = CliRunner().invoke(main, ["config", "check", str(REPO / "evolvd.yaml")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(": ok")


def test_config_show_prints_effective_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVOLVD_KAFKA__GROUP_ID", "shown")
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "group_id: shown" in result.output


def test_a_fleet_of_replicas_is_configured_in_external_mode(tmp_path: Path) -> None:
    text = (
        "serving:\n  mode: external\n  url: http://router:8000\n  adapter_dir: /srv/adapters\n"
        "  replica_urls: [http://a:8000, http://b:8000]\n  health_path: /readiness\n"
    )
    serving = load_config(write(tmp_path, text)).serving
    assert (serving.adapter_dir, serving.replica_urls) == (
        Path("/srv/adapters"),
        ["http://a:8000", "http://b:8000"],
    )
    assert serving.health_path == "/readiness"


def test_a_managed_vllm_server_is_refused_beyond_loopback(tmp_path: Path) -> None:
    path = write(tmp_path, "serving:\n  host: 0.0.0.0\n")
    errors = errors_of(path)
    assert len(errors) == 1 and "serving.host 0.0.0.0 is not a loopback address" in errors[0], errors
    assert "use serving.mode external" in errors[0]
    external = "serving:\n  mode: external\n  url: http://vllm:8000\n  host: 0.0.0.0\n"
    assert load_config(write(tmp_path, external)).serving.mode == "external"
