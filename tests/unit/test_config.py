"""Configuration: FDPUSH_* variables (and a config file) into one Settings object, or an error.

In-process: ``load_settings`` reads the (monkeypatched) environment, as ``fdpush`` does at start.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from fdpush.config import (
    ChannelDefinition,
    ConfigError,
    GatewayHost,
    RateLimit,
    Settings,
    config_problems,
    example_config,
    load_settings,
    resolve_master_key,
    unknown_settings,
)

DEV_SECRET = "config-test-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FDPUSH_* variable from the outside, and a working directory of the test's own."""
    for name in list(os.environ):
        if name.startswith("FDPUSH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def dev_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The least a service needs to start: dev authentication with a long enough secret."""
    monkeypatch.setenv("FDPUSH_AUTH_MODE", "dev")
    monkeypatch.setenv("FDPUSH_AUTH_DEV_SECRET", DEV_SECRET)


def load_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_with(monkeypatch, **env)
    return str(caught.value)


# --- defaults ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("dev_env")
def test_defaults() -> None:
    """Without settings the service listens on 127.0.0.1:8080 with ./fdpush.db and safe rules."""
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.database_url == "sqlite:///./fdpush.db"
    assert settings.base_path == ""
    assert settings.max_body_bytes == 64 * 1024
    assert settings.encryption == "required"
    assert settings.channels == ()
    assert settings.gateway_allowlist == ()
    assert settings.gateway_allow_http is False
    assert settings.auth_user_claim == "sub"
    assert settings.auth_require_claim is None
    assert settings.auth_jwt_issuer is None
    assert settings.auth_jwt_audience is None
    assert settings.master_key is None
    assert settings.migrate_on_start is True
    assert isinstance(settings.rate_limit, RateLimit)


def test_default_auth_mode_is_jwt_and_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """jwt is the default mode; without a key the error names both ways to give one."""
    message = config_error(monkeypatch)
    assert "FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE" in message
    assert "FDPUSH_AUTH_JWKS_FILE" in message


def test_jwt_mode_with_a_missing_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A key file that does not exist is named, with its setting."""
    message = config_error(
        monkeypatch,
        FDPUSH_AUTH_MODE="jwt",
        FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE=str(tmp_path / "nope.pem"),
    )
    assert message.startswith("FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE")
    assert "nope.pem" in message


def test_jwt_mode_with_both_key_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PEM key and a JWKS at once is ambiguous and refused."""
    (tmp_path / "key.pem").write_text("x")
    (tmp_path / "jwks.json").write_text("{}")
    message = config_error(
        monkeypatch,
        FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE=str(tmp_path / "key.pem"),
        FDPUSH_AUTH_JWKS_FILE=str(tmp_path / "jwks.json"),
    )
    assert "exactly one" in message


def test_jwt_mode_with_a_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """jwt mode with a key file, issuer, audience, user claim and required claim."""
    (tmp_path / "key.pem").write_text("pem")
    settings = load_with(
        monkeypatch,
        FDPUSH_AUTH_JWT_PUBLIC_KEY_FILE=str(tmp_path / "key.pem"),
        FDPUSH_AUTH_JWT_ISSUER="https://idp.test",
        FDPUSH_AUTH_JWT_AUDIENCE="fdpush",
        FDPUSH_AUTH_USER_CLAIM="kvnr",
        FDPUSH_AUTH_REQUIRE_CLAIM="professionOID = 1.2.276.0.76.4.49",
    )
    assert settings.auth_mode == "jwt"
    assert settings.auth_jwt_public_key_file == tmp_path / "key.pem"
    assert settings.auth_jwt_issuer == "https://idp.test"
    assert settings.auth_jwt_audience == "fdpush"
    assert settings.auth_user_claim == "kvnr"
    assert settings.auth_require_claim == ("professionOID", "1.2.276.0.76.4.49")


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_dev_mode_needs_a_long_secret(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    """Dev tokens are HMAC-signed: a guessable secret is refused."""
    message = config_error(monkeypatch, FDPUSH_AUTH_MODE="dev", FDPUSH_AUTH_DEV_SECRET=secret)
    assert message.startswith("FDPUSH_AUTH_DEV_SECRET")


# --- FDPUSH_CHANNELS --------------------------------------------------------------------------


@pytest.mark.usefixtures("dev_env")
def test_channels_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Comma-separated ids in catalog order; ``=enabled``/``=disabled`` set the default."""
    settings = load_with(
        monkeypatch,
        FDPUSH_CHANNELS=" erp.task.activate=enabled, erp.communication.new ,"
        "erp.task.close=disabled,",
    )
    assert settings.channels == (
        ChannelDefinition("erp.task.activate", "enabled"),
        ChannelDefinition("erp.communication.new", "not_set"),
        ChannelDefinition("erp.task.close", "disabled"),
    )


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize("value", ["a,b,a", "a=enabled,a=disabled"])
def test_duplicate_channels_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A channel listed twice would have two defaults."""
    message = config_error(monkeypatch, FDPUSH_CHANNELS=value)
    assert message.startswith("FDPUSH_CHANNELS")
    assert "twice" in message


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize(
    "value",
    [
        "has space",
        "-leading-dash",
        "umlaut.ä",
        "a/b",
        "x" * 129,
        "ok=on",
        "ok=ENABLED",
        "=enabled",
    ],
)
def test_bad_channel_entries_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Ids are 1-128 of letters, digits, '.', '_', ':', '-'; defaults one of the three statuses."""
    assert config_error(monkeypatch, FDPUSH_CHANNELS=value).startswith("FDPUSH_CHANNELS:")


# --- FDPUSH_GATEWAY_ALLOWLIST -----------------------------------------------------------------


@pytest.mark.usefixtures("dev_env")
def test_allowlist_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``host[:port]`` separated by ';'; port 443 by default; IPv6 in brackets; lower-cased."""
    settings = load_with(
        monkeypatch,
        FDPUSH_GATEWAY_ALLOWLIST="gateway.test; GW2.Test:8443;[::1]:8443;[2001:db8::1];10.0.0.1:1",
    )
    assert settings.gateway_allowlist == (
        GatewayHost("gateway.test", 443),
        GatewayHost("gw2.test", 8443),
        GatewayHost("[::1]", 8443),
        GatewayHost("[2001:db8::1]", 443),
        GatewayHost("10.0.0.1", 1),
    )


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize(
    "value",
    [
        "https://gateway.test",
        "gateway.test/push/v1/",
        "gateway.test:",
        "gateway.test:0",
        "gateway.test:65536",
        "gateway.test:https",
        "::1",
        "2001:db8::1:443",
        "gate way.test",
        "gateway.test,gw2.test",
    ],
)
def test_bad_allowlist_entries_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Anything but ``host[:port]`` (schemes, paths, bare IPv6, bad ports) is a start-up error."""
    message = config_error(monkeypatch, FDPUSH_GATEWAY_ALLOWLIST=value)
    assert message.startswith("FDPUSH_GATEWAY_ALLOWLIST:")


# --- FDPUSH_RATE_LIMIT ------------------------------------------------------------------------


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize(
    ("value", "expected"),
    [("10/60", RateLimit(10, 60)), ("1/1", RateLimit(1, 1)), ("0", None)],
)
def test_rate_limit(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: RateLimit | None
) -> None:
    """``N/S`` is N write requests per S seconds per user; ``0`` turns the limit off."""
    assert load_with(monkeypatch, FDPUSH_RATE_LIMIT=value).rate_limit == expected


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize("value", ["ten/60", "10", "10/", "/60", "10/0", "0/60", "-1/60", "1/2/3"])
def test_bad_rate_limit_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    message = config_error(monkeypatch, FDPUSH_RATE_LIMIT=value)
    assert message.startswith("FDPUSH_RATE_LIMIT:")


# --- every bad value names its variable -------------------------------------------------------


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FDPUSH_PORT", "eighty"),
        ("FDPUSH_PORT", "70000"),
        ("FDPUSH_LOG_LEVEL", "loud"),
        ("FDPUSH_LOG_FORMAT", "xml"),
        ("FDPUSH_MAX_BODY_BYTES", "10"),
        ("FDPUSH_DATABASE_URL", "mysql://db/fdpush"),
        ("FDPUSH_BASE_PATH", "client v1"),
        ("FDPUSH_ENCRYPTION", "sometimes"),
        ("FDPUSH_GATEWAY_ALLOW_HTTP", "perhaps"),
        ("FDPUSH_MAX_PUSHERS_PER_USER", "0"),
        ("FDPUSH_AUTH_MODE", "none"),
        ("FDPUSH_AUTH_REQUIRE_CLAIM", "role"),
        ("FDPUSH_AUTH_JWT_LEEWAY_SECONDS", "-1"),
        ("FDPUSH_MIGRATE_ON_START", "sometimes"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """The error message starts with the FDPUSH_ variable to fix."""
    assert config_error(monkeypatch, **{name: value}).startswith(name + ":")


@pytest.mark.usefixtures("dev_env")
def test_base_path_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trailing slash on the base path does not matter."""
    assert load_with(monkeypatch, FDPUSH_BASE_PATH="/client/v1/").base_path == "/client/v1"


# --- config file ------------------------------------------------------------------------------


def test_config_file_given_as_argument(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--config FILE`` holds FDPUSH_*=value lines; the environment wins over the file."""
    path = tmp_path / "fdpush.env"
    path.write_text(
        "# fdpush settings\n"
        "FDPUSH_AUTH_MODE=dev\n"
        f"FDPUSH_AUTH_DEV_SECRET={DEV_SECRET}\n"
        "FDPUSH_PORT=9000\n"
        "FDPUSH_CHANNELS=a=enabled,b\n"
    )
    monkeypatch.setenv("FDPUSH_PORT", "9100")
    settings = load_settings(path)
    assert settings.auth_mode == "dev"
    assert settings.channels == (ChannelDefinition("a", "enabled"), ChannelDefinition("b"))
    assert settings.port == 9100


def test_config_file_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FDPUSH_CONFIG_FILE names the file when no argument does."""
    path = tmp_path / "fdpush.env"
    path.write_text(
        f"FDPUSH_AUTH_MODE=dev\nFDPUSH_AUTH_DEV_SECRET={DEV_SECRET}\nFDPUSH_PORT=9001\n"
    )
    settings = load_with(monkeypatch, FDPUSH_CONFIG_FILE=str(path))
    assert (settings.auth_mode, settings.port) == ("dev", 9001)


def test_a_bad_value_in_the_config_file_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "fdpush.env"
    path.write_text(f"FDPUSH_AUTH_MODE=dev\nFDPUSH_AUTH_DEV_SECRET={DEV_SECRET}\nFDPUSH_PORT=x\n")
    with pytest.raises(ConfigError, match=r"^FDPUSH_PORT:"):
        load_settings(path)


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = config_error(monkeypatch, FDPUSH_CONFIG_FILE=str(tmp_path / "missing.env"))
    assert "missing.env" in message


# --- master key -------------------------------------------------------------------------------


@pytest.mark.usefixtures("dev_env")
def test_master_key_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FDPUSH_MASTER_KEY (Base64 of 32 bytes) is used as is; no key file is made."""
    key = os.urandom(32)
    settings = load_with(
        monkeypatch,
        FDPUSH_MASTER_KEY=base64.b64encode(key).decode(),
        FDPUSH_MASTER_KEY_FILE=str(tmp_path / "master.key"),
    )
    assert resolve_master_key(settings) == key
    assert not (tmp_path / "master.key").exists()


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize(
    "value",
    [
        base64.b64encode(os.urandom(16)).decode(),
        base64.b64encode(os.urandom(33)).decode(),
        "not base64 at all!",
        os.urandom(32).hex(),
    ],
    ids=["16-bytes", "33-bytes", "not-base64", "hex"],
)
def test_bad_master_key_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Anything but Base64 of exactly 32 bytes is refused at start-up, naming the variable."""
    message = config_error(monkeypatch, FDPUSH_MASTER_KEY=value)
    assert message.startswith("FDPUSH_MASTER_KEY:")
    assert value not in message


@pytest.mark.usefixtures("dev_env")
def test_master_key_file_is_generated_once_owner_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without FDPUSH_MASTER_KEY a key file is generated (0600, with a warning) and then reused."""
    path = tmp_path / "keys" / "master.key"
    settings = load_with(monkeypatch, FDPUSH_MASTER_KEY_FILE=str(path))
    with caplog.at_level(logging.WARNING):
        first = resolve_master_key(settings)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(path.read_text()) == first
    assert any("master key" in r.getMessage() for r in caplog.records)
    assert not any(base64.b64encode(first).decode() in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_master_key(settings) == first
    assert not caplog.records


@pytest.mark.usefixtures("dev_env")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_master_key_file_readable_by_others_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    path.chmod(mode)
    settings = load_with(monkeypatch, FDPUSH_MASTER_KEY_FILE=str(path))
    with pytest.raises(ConfigError, match=r"^FDPUSH_MASTER_KEY_FILE"):
        resolve_master_key(settings)


@pytest.mark.usefixtures("dev_env")
def test_corrupt_master_key_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "master.key"
    path.write_text(base64.b64encode(os.urandom(20)).decode())
    path.chmod(0o600)
    settings = load_with(monkeypatch, FDPUSH_MASTER_KEY_FILE=str(path))
    with pytest.raises(ConfigError, match=r"^FDPUSH_MASTER_KEY_FILE.*32 bytes"):
        resolve_master_key(settings)


@pytest.mark.usefixtures("dev_env")
def test_an_empty_variable_means_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """``FDPUSH_RATE_LIMIT=`` (empty, as an env file may leave it) keeps the default."""
    settings = load_with(monkeypatch, FDPUSH_RATE_LIMIT="", FDPUSH_PORT="")
    assert settings.rate_limit == RateLimit(30, 60)
    assert settings.port == 8080


# --- names that are no setting ----------------------------------------------------------------


def test_a_misspelt_name_in_the_config_file_stops_start_up_with_a_suggestion(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fdpush.env"
    path.write_text(
        f"FDPUSH_AUTH_MODE=dev\nFDPUSH_AUTH_DEV_SECRET={DEV_SECRET}\nFDPUSH_PROT=9000\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == (
        f"FDPUSH_PROT (in {path}): not a setting; did you mean FDPUSH_PORT?"
    )


def test_a_name_without_prefix_in_the_config_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "fdpush.env"
    path.write_text("DATABASE_URL=sqlite:///x.db\n")
    with pytest.raises(ConfigError, match=r"^DATABASE_URL .*did you mean FDPUSH_DATABASE_URL\?$"):
        load_settings(path)


def test_unknown_environment_names_are_found_with_suggestions() -> None:
    environ = {
        "FDPUSH_MASTERKEY": "x",
        "FDPUSH_GATEWAY_ALLOW_LIST": "x",
        "FDPUSH_PORT": "1",
        "FDPUSH_CONFIG_FILE": "x",
        "FDPUSH_SOMETHING_ELSE_ENTIRELY": "x",
        "HOME": "/root",  # not ours: other programs share the environment
    }
    problems = unknown_settings(environ)
    assert problems == [
        "FDPUSH_MASTERKEY (in the environment): not a setting; did you mean FDPUSH_MASTER_KEY?",
        "FDPUSH_GATEWAY_ALLOW_LIST (in the environment): not a setting; "
        "did you mean FDPUSH_GATEWAY_ALLOWLIST?",
        "FDPUSH_SOMETHING_ELSE_ENTIRELY (in the environment): not a setting "
        "(fdpush config example lists them)",
    ]


# --- relative paths in a config file ----------------------------------------------------------


def test_relative_paths_in_a_config_file_are_relative_to_its_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Started from another folder, the file's database and key file are still the same ones."""
    folder = tmp_path / "etc"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "ca.pem").write_text("x")
    path = folder / "fdpush.env"
    path.write_text(
        "FDPUSH_AUTH_MODE=dev\n"
        f"FDPUSH_AUTH_DEV_SECRET={DEV_SECRET}\n"
        "FDPUSH_DATABASE_URL=sqlite:///./data/fdpush.db\n"
        "FDPUSH_MASTER_KEY_FILE=keys/master.key\n"
        "FDPUSH_GATEWAY_CA_FILE=ca.pem\n"
        "FDPUSH_AUTH_JWKS_FILE=/abs/jwks.json\n"
    )
    monkeypatch.chdir(elsewhere)
    settings = load_settings(path, for_serving=False)
    assert settings.database_url == f"sqlite:///{folder}/data/fdpush.db"
    assert settings.master_key_file == folder / "keys" / "master.key"
    assert settings.gateway_ca_file == folder / "ca.pem"
    assert settings.auth_jwks_file == Path("/abs/jwks.json")
    settings.check_delivery()  # the CA file is found although the working folder is elsewhere


def test_the_environment_still_wins_over_a_relative_path_in_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "fdpush.env"
    path.write_text("FDPUSH_MASTER_KEY_FILE=in-file.key\nFDPUSH_DATABASE_URL=sqlite:///f.db\n")
    monkeypatch.setenv("FDPUSH_MASTER_KEY_FILE", "from-env.key")
    monkeypatch.setenv("FDPUSH_DATABASE_URL", "sqlite:///:memory:")
    settings = load_settings(path, for_serving=False)
    assert settings.master_key_file == Path("from-env.key")
    assert settings.database_url == "sqlite:///:memory:"


@pytest.mark.usefixtures("dev_env")
def test_relative_paths_in_the_environment_stay_relative_to_the_working_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_with(monkeypatch, FDPUSH_DATABASE_URL="sqlite:///./here.db")
    assert settings.database_url == "sqlite:///./here.db"


# --- production needs a master key ------------------------------------------------------------


def test_jwt_mode_without_a_master_key_refuses_and_makes_no_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    settings = Settings(auth_mode="jwt", master_key_file=key_file)
    with pytest.raises(ConfigError) as caught:
        resolve_master_key(settings)
    message = str(caught.value)
    assert message.startswith("FDPUSH_MASTER_KEY: required with FDPUSH_AUTH_MODE=jwt")
    assert "\n" not in message
    assert not key_file.exists()


def test_jwt_mode_reads_an_existing_key_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    key_file = tmp_path / "master.key"
    key_file.write_text(base64.b64encode(key).decode())
    key_file.chmod(0o600)
    assert resolve_master_key(Settings(auth_mode="jwt", master_key_file=key_file)) == key


# --- fdpush config example / check ------------------------------------------------------------


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_the_example_lists_every_setting_with_its_default() -> None:
    text = example_config()
    lines = [line for line in text.splitlines() if line.startswith("#FDPUSH_")]
    assert [line.split("=", 1)[0][1:] for line in lines] == [
        f"FDPUSH_{name.upper()}" for name in Settings.model_fields
    ]
    assert "#FDPUSH_PORT=8080" in lines
    assert "#FDPUSH_RATE_LIMIT=30/60" in lines
    assert "#FDPUSH_MIGRATE_ON_START=1" in lines
    assert "#FDPUSH_MASTER_KEY_FILE=./fdpush.master-key" in lines
    assert all(line.startswith("#") or not line for line in text.splitlines())


def test_the_example_uncommented_gives_the_defaults(tmp_path: Path) -> None:
    """Each default as written in the example reads back as the same value."""
    path = tmp_path / "all.env"
    path.write_text(
        "\n".join(line[1:] for line in example_config().splitlines() if line.startswith("#FDPUSH_"))
        + "\n"
    )
    from_file = Settings(_env_file=path)  # type: ignore[call-arg]
    assert from_file == Settings()


def test_config_problems_lists_every_problem_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fdpush.env"
    path.write_text(
        "FDPUSH_AUTH_MODE=jwt\nFDPUSH_PORT=x\nFDPUSH_MAX_BODY_BYTES=1\nFDPUSH_CHANELS=a\n"
    )
    problems = config_problems(path, {"FDPUSH_LOGLEVEL": "debug"})
    assert problems == [
        "FDPUSH_LOGLEVEL (in the environment): not a setting; did you mean FDPUSH_LOG_LEVEL?",
        f"FDPUSH_CHANELS (in {path}): not a setting; did you mean FDPUSH_CHANNELS?",
        "FDPUSH_PORT: Input should be a valid integer, unable to parse string as an integer",
        "FDPUSH_MAX_BODY_BYTES: Input should be greater than or equal to 1024",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fdpush.env"]


def test_config_problems_of_a_good_production_configuration(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    environ = {
        "FDPUSH_AUTH_MODE": "jwt",
        "FDPUSH_AUTH_JWKS_FILE": str(jwks),
        "FDPUSH_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    assert config_problems(None, environ) == []
    del environ["FDPUSH_MASTER_KEY"]
    (problem,) = config_problems(None, environ)
    assert problem.startswith("FDPUSH_MASTER_KEY: required")
