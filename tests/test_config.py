"""Server settings: read from the environment and CLI flags, validated once at start, every failure
naming the setting; ``voice-bridge serve`` exits 2 with that message instead of starting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from telephony.cli import main
from telephony.config import ConfigError, Settings, settings_from_env

TOKEN = {"TWILIO_AUTH_TOKEN": "secret-token", "PUBLIC_URL": "https://bridge.example.com"}


def config_error(env: dict[str, str], **overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_env(env, **overrides)
    return str(info.value)


# ---- the auth token -------------------------------------------------------------------------------
def test_refuses_to_build_without_twilio_auth_token() -> None:
    message = config_error({})
    assert "TWILIO_AUTH_TOKEN" in message and "--insecure-dev" in message


def test_an_empty_twilio_auth_token_counts_as_missing() -> None:
    assert "TWILIO_AUTH_TOKEN" in config_error({"TWILIO_AUTH_TOKEN": ""})


def test_insecure_dev_builds_without_a_token_and_says_so() -> None:
    settings = settings_from_env({}, insecure_dev=True)
    assert settings.insecure and settings.twilio_auth_token is None
    assert settings_from_env({"VOICE_BRIDGE_INSECURE_DEV": "true"}).insecure


def test_with_a_token_the_bridge_is_secure() -> None:
    settings = settings_from_env(TOKEN)
    assert settings.twilio_auth_token == "secret-token" and not settings.insecure


# ---- PUBLIC_URL ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("public_url", "kept"), [
    ("https://bridge.example.com", "https://bridge.example.com"),
    ("https://bridge.example.com/", "https://bridge.example.com"),
    ("http://127.0.0.1:8080/voice/", "http://127.0.0.1:8080/voice"),
])
def test_public_url_is_http_or_https_kept_without_a_trailing_slash(public_url: str, kept: str) -> None:
    settings = settings_from_env({**TOKEN, "PUBLIC_URL": public_url})
    assert settings.public_url == kept
    assert settings.stream_public_base() == kept


@pytest.mark.parametrize("public_url", [
    "ftp://bridge.example.com", "wss://bridge.example.com", "bridge.example.com",
    "https://bridge.example.com/?a=1", "https://bridge.example.com/twiml#top",
    "https://", "http:///path",  # no host: would only fail on the first call, building the stream URL
])
def test_public_url_must_be_http_or_https_with_a_host_and_no_query(public_url: str) -> None:
    assert "public_url" in config_error({**TOKEN, "PUBLIC_URL": public_url})


def test_with_a_token_public_url_is_required() -> None:
    # without it, signatures would be checked against the Host header and the stream URL would be
    # the bind address: every call would fail, so the server does not start
    assert "PUBLIC_URL is not set" in config_error({"TWILIO_AUTH_TOKEN": "secret-token"})


def test_in_insecure_development_the_stream_base_defaults_to_the_bind_address() -> None:
    settings = settings_from_env({"VOICE_BRIDGE_HOST": "0.0.0.0", "VOICE_BRIDGE_PORT": "9000"},
                                 insecure_dev=True)
    assert settings.public_url is None
    assert settings.stream_public_base() == "http://0.0.0.0:9000"


def test_an_empty_greeting_means_no_greeting() -> None:
    assert settings_from_env({**TOKEN, "VOICE_BRIDGE_DEFAULT_GREETING": ""}).default_greeting == ""


# ---- VOICE_BRIDGE_* variables ---------------------------------------------------------------------------
def test_an_unknown_voice_bridge_variable_is_an_error_naming_it() -> None:
    message = config_error({**TOKEN, "VOICE_BRIDGE_PROT": "9000"})
    assert message.startswith("VOICE_BRIDGE_PROT: unknown setting")
    assert "VOICE_BRIDGE_PORT" in message  # and the known ones are listed


def test_unrelated_variables_are_ignored() -> None:
    assert settings_from_env({**TOKEN, "HOME": "/root", "VOICEBRIDGE_X": "1", "PORT": "1"}).port == 8080


def test_environment_values_are_coerced_to_their_types() -> None:
    settings = settings_from_env({
        **TOKEN, "VOICE_BRIDGE_PORT": "9000", "VOICE_BRIDGE_LEAD_MS": "300.5",
        "VOICE_BRIDGE_MAX_CALLS": "12", "VOICE_BRIDGE_REQUIRE_STREAM_SIGNATURE": "1",
        "VOICE_BRIDGE_ENGINE": "synthetic", "VOICE_BRIDGE_RECORD_DIR": "/tmp/calls",
    })
    assert settings.port == 9000 and isinstance(settings.port, int)
    assert settings.lead_ms == 300.5
    assert settings.max_calls == 12
    assert settings.require_stream_signature is True
    assert settings.engine == "synthetic"
    assert settings.record_dir == Path("/tmp/calls")


def test_an_empty_variable_means_unset() -> None:
    # VOICE_BRIDGE_RECORD_DIR= (as docker-compose writes an unset value) must not record calls to "."
    settings = settings_from_env({**TOKEN, "VOICE_BRIDGE_RECORD_DIR": "", "VOICE_BRIDGE_VOICES_DIR": "",
                                  "VOICE_BRIDGE_PORT": ""})
    assert settings.record_dir is None and settings.voices_dir is None and settings.port == 8080


@pytest.mark.parametrize(("env", "named"), [
    ({"VOICE_BRIDGE_PORT": "eighty"}, "port"),
    ({"VOICE_BRIDGE_PORT": "70000"}, "port"),
    ({"VOICE_BRIDGE_ENGINE": "gpu-magic"}, "engine"),
    ({"VOICE_BRIDGE_LEAD_MS": "5"}, "lead_ms"),
    ({"VOICE_BRIDGE_INSECURE_DEV": "maybe"}, "insecure_dev"),
    ({"VOICE_BRIDGE_VOICE_SERVER_URL": "https://"}, "voice_server_url"),
    ({"VOICE_BRIDGE_LOG_LEVEL": "bogus"}, "log_level"),
    ({"VOICE_BRIDGE_DEFAULT_PRESET": "nope"}, "nope"),
    ({"VOICE_BRIDGE_PRESETS_PATH": "/nonexistent/presets.yaml"}, "presets"),
])
def test_a_bad_value_names_its_setting(env: dict[str, str], named: str) -> None:
    message = config_error({**TOKEN, **env})
    assert message.startswith("invalid configuration:") and named in message


def test_voices_dir_must_be_a_directory(tmp_path: Path) -> None:
    assert settings_from_env({**TOKEN, "VOICE_BRIDGE_VOICES_DIR": str(tmp_path)}).voices_dir == tmp_path
    assert "voices_dir" in config_error({**TOKEN, "VOICE_BRIDGE_VOICES_DIR": str(tmp_path / "missing")})


# ---- CLI overrides --------------------------------------------------------------------------------------
def test_cli_overrides_win_over_the_environment() -> None:
    env = {**TOKEN, "VOICE_BRIDGE_PORT": "9000", "PUBLIC_URL": "https://env.example.com",
           "VOICE_BRIDGE_DEFAULT_AGENT": "wss://env.example.com/agent"}
    settings = settings_from_env(env, port=9100, public_url="https://flag.example.com",
                                 default_agent="demo")
    assert settings.port == 9100
    assert settings.public_url == "https://flag.example.com"
    assert settings.default_agent == "demo"


def test_overrides_left_as_none_do_not_hide_the_environment() -> None:
    settings = settings_from_env({**TOKEN, "VOICE_BRIDGE_PORT": "9000"}, port=None, insecure_dev=None)
    assert settings.port == 9000 and settings.insecure_dev is False


def test_an_override_is_validated_like_the_environment() -> None:
    assert "port" in config_error(TOKEN, port=-1)


def test_the_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_environment(monkeypatch)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-os")
    monkeypatch.setenv("PUBLIC_URL", "https://bridge.example.com")
    monkeypatch.setenv("VOICE_BRIDGE_PORT", "9001")
    settings = settings_from_env()
    assert settings.twilio_auth_token == "from-os" and settings.port == 9001


# ---- default_agent ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("agent", ["demo", "ws://127.0.0.1:9000/agent", "wss://agent.example.com/relay",
                                   "python:tests.sample_agents:make_agent"])
def test_default_agent_may_be_demo_a_websocket_url_or_a_python_factory(agent: str) -> None:
    assert settings_from_env({**TOKEN, "VOICE_BRIDGE_DEFAULT_AGENT": agent}).default_agent == agent


@pytest.mark.parametrize("agent", ["http://agent.example.com", "https://agent.example.com", "Demo",
                                   "tests.sample_agents:make_agent", ""])
def test_default_agent_refuses_anything_else(agent: str) -> None:
    assert "default_agent" in config_error(TOKEN, default_agent=agent)


def test_settings_refuse_unknown_fields() -> None:
    with pytest.raises(ValueError, match="no_such"):
        Settings(twilio_auth_token="t", no_such=1)  # type: ignore[call-arg]


# ---- voice-bridge serve ----------------------------------------------------------------------------------
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VOICE_BRIDGE_") or name in ("TWILIO_AUTH_TOKEN", "PUBLIC_URL"):
            monkeypatch.delenv(name)


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_environment(monkeypatch)

    def must_not_serve(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server must not start on a configuration error")

    monkeypatch.setattr("telephony.net.listen_socket", must_not_serve)


@pytest.mark.usefixtures("no_config")
@pytest.mark.parametrize(("argv", "says"), [
    (["serve"], "TWILIO_AUTH_TOKEN"),
    (["serve", "--insecure-dev", "--public-url", "ftp://bridge.example.com"], "public_url"),
    (["serve", "--insecure-dev", "--agent", "http://agent.example.com"], "default_agent"),
    (["serve", "--insecure-dev", "--engine", "gpu-magic"], "engine"),
    (["serve", "--insecure-dev", "--port", "70000"], "port"),
])
def test_serve_exits_2_with_a_clear_message_on_a_config_error(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("voice-bridge: ") and says in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.usefixtures("no_config")
def test_serve_reports_an_unknown_environment_variable(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VOICE_BRIDGE_TYPO", "1")
    assert main(["serve", "--insecure-dev"]) == 2
    assert "VOICE_BRIDGE_TYPO: unknown setting" in capsys.readouterr().err


@pytest.mark.usefixtures("no_config")
def test_serve_reports_a_missing_token_with_the_way_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "TWILIO_AUTH_TOKEN" in err and "--insecure-dev" in err


def test_bad_flags_are_argparse_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "eighty"])
    assert info.value.code == 2 and "--port" in capsys.readouterr().err
