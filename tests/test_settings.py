"""Configuration: validated at start, with the setting named, never on the first live call."""

from __future__ import annotations

import pytest

from telephony.cli import main
from telephony.config import ConfigError, settings_from_env


def test_no_auth_token_refuses_to_start_unless_insecure_dev_is_explicit() -> None:
    with pytest.raises(ConfigError, match=r"TWILIO_AUTH_TOKEN.*--insecure-dev"):
        settings_from_env({})
    assert settings_from_env({}, insecure_dev=True).insecure


def test_twilio_names_and_prefixed_variables_are_read_and_coerced() -> None:
    settings = settings_from_env({"TWILIO_AUTH_TOKEN": "t", "PUBLIC_URL": "https://bridge.example.com/",
                                  "VOICE_BRIDGE_PORT": "9000", "VOICE_BRIDGE_LEAD_MS": "300"})
    assert settings.public_url == "https://bridge.example.com"
    assert settings.port == 9000 and settings.lead_ms == 300.0


def test_flags_override_the_environment() -> None:
    settings = settings_from_env({"TWILIO_AUTH_TOKEN": "t", "VOICE_BRIDGE_PORT": "9000"}, port=9100)
    assert settings.port == 9100


@pytest.mark.parametrize(("env", "named"), [
    ({"PUBLIC_URL": "ftp://x"}, "public_url"),
    ({"PUBLIC_URL": "https://x/?a=1"}, "public_url"),
    ({"VOICE_BRIDGE_PORT": "eighty"}, "port"),
    ({"VOICE_BRIDGE_DEFAULT_AGENT": "http://agent"}, "default_agent"),
    ({"VOICE_BRIDGE_LEAD_MS": "5"}, "lead_ms"),
    ({"VOICE_BRIDGE_ENGINE": "gpu-magic"}, "engine"),
    ({"VOICE_BRIDGE_NO_SUCH_THING": "1"}, "VOICE_BRIDGE_NO_SUCH_THING"),
])
def test_bad_values_fail_with_the_setting_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        settings_from_env({"TWILIO_AUTH_TOKEN": "t", **env})


def test_cli_exits_2_with_a_clear_message_on_bad_configuration(capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    assert main(["serve", "--port", "0"]) == 2
    assert "TWILIO_AUTH_TOKEN" in capsys.readouterr().err
