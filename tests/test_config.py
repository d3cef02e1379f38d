"""Settings: TOML file, environment overrides, secrets read at use time, clear errors."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

import capirelay.config as config_module
from capirelay.config import ConfigError, Secret, Settings, load_settings
from capirelay.ops.doctor import Check, Status, config_checks
from capirelay.outbox import sqlite_path_from_url

TOML = """
storage = "sqlite:///{db}"
[pixels.1234567890]
access_token = {{ env = "TEST_CAPIRELAY_TOKEN" }}
test_event_code = "TEST111"
default_country = "US"
[ingest_keys.backend]
key = {{ file = "{keyfile}" }}
pixels = ["1234567890"]
[delivery]
batch_size = 500
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    keyfile = tmp_path / "key.txt"
    keyfile.write_text("s3cret-key\n")
    path = tmp_path / "capirelay.toml"
    path.write_text(TOML.format(db=tmp_path / "x.db", keyfile=keyfile))
    return path


def test_file_values_load(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CAPIRELAY_TOKEN", "tok-1")
    settings = load_settings(config_file)
    pixel = settings.pixels["1234567890"]
    assert pixel.test_event_code == "TEST111"
    assert pixel.access_token is not None
    assert pixel.access_token.resolve() == "tok-1"
    assert settings.ingest_keys["backend"].key.resolve() == "s3cret-key"
    assert settings.delivery.batch_size == 500
    assert settings.delivery.linger_ms == 200  # default kept


def test_environment_overrides_nested_values(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAPIRELAY_DELIVERY__BATCH_SIZE", "250")
    monkeypatch.setenv("CAPIRELAY_PIXELS__1234567890__TEST_EVENT_CODE", "TEST222")
    settings = load_settings(config_file)
    assert settings.delivery.batch_size == 250
    pixel = settings.pixels["1234567890"]
    assert pixel.test_event_code == "TEST222"
    # the rest of the pixel's table survives the override
    assert pixel.default_country == "US"


def test_rotated_token_is_read_without_reload(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CAPIRELAY_TOKEN", "old")
    secret = load_settings(config_file).pixels["1234567890"].access_token
    assert secret is not None and secret.resolve() == "old"
    monkeypatch.setenv("TEST_CAPIRELAY_TOKEN", "new")
    assert secret.resolve() == "new"


def test_literal_secret_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[pixels.42]\naccess_token = "EAAliteral"\n')
    settings = load_settings(path)
    warnings = settings.warnings()
    assert any("pixels.42.access_token is a literal" in w for w in warnings)
    assert all("EAAliteral" not in w for w in warnings)
    assert "EAAliteral" not in repr(settings)


# Every secret-typed setting written as a literal in the file: (the TOML, its dotted name).
LITERAL_SECRETS = [
    ('[pixels.42]\naccess_token = "s3cret-literal"\n', "pixels.42.access_token"),
    ('[pixels.42]\napp_secret = "s3cret-literal"\n', "pixels.42.app_secret"),
    ('[pixels.42]\nverification_secret = "s3cret-literal"\n', "pixels.42.verification_secret"),
    ('[ingest_keys.shop]\nkey = "s3cret-literal"\n', "ingest_keys.shop.key"),
    (
        '[pixels.42]\n[webhooks.shop]\npreset = "shopify"\npixel_id = "42"\n'
        'secret = "s3cret-literal"\n',
        "webhooks.shop.secret",
    ),
    ('[dashboard]\nadmin_token = "s3cret-literal"\n', "dashboard.admin_token"),
    (
        '[dashboard]\nbasic_user = "ops"\nbasic_password = "s3cret-literal"\n',
        "dashboard.basic_password",
    ),
    ('metrics_token = "s3cret-literal"\n', "metrics_token"),
]


@pytest.mark.parametrize(
    ("snippet", "setting"), LITERAL_SECRETS, ids=[s for _, s in LITERAL_SECRETS]
)
def test_every_literal_secret_in_the_file_is_warned_about_the_same_way(
    tmp_path: Path, snippet: str, setting: str
) -> None:
    """Not only access tokens, verification secrets and ingest keys: a webhook secret, an
    app secret, the dashboard's and /metrics' credentials written as literals get the same
    warning, naming the setting and the two forms that keep the secret out of the file."""
    path = tmp_path / "c.toml"
    path.write_text(snippet)
    every = load_settings(path).warnings()
    warnings = [w for w in every if "literal" in w]
    key = setting.rpartition(".")[2]
    assert warnings == [
        f'{setting} is a literal in the config file; write `{key} = {{ env = "..." }}` '
        "(the name of an environment variable) or "
        f'`{key} = {{ file = "..." }}` (a path, relative to the config file\'s directory) '
        "in its place, so the secret stays out of the file"
    ]
    assert all("s3cret-literal" not in w for w in every)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[pixels.abc]\n", "pixels"),
        ('[pixels.1]\napi_version = "26"\n', "pixels.1.api_version"),
        ("[delivery]\nbatch_size = 5000\n", "delivery.batch_size"),
        ("unknown_setting = 1\n", "unknown_setting"),
    ],
)
def test_invalid_config_names_the_setting(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert expected in str(info.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_secret_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError):
        Secret(env="A", value="b")
    with pytest.raises(ValueError):
        Secret()


def test_missing_secret_resolves_to_none(tmp_path: Path) -> None:
    assert Secret(env="CAPIRELAY_TEST_UNSET_VARIABLE").resolve() is None
    assert Secret(file=tmp_path / "absent").resolve() is None


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every secret file read from now on (the real read still happens)."""
    reads: list[Path] = []
    real = Path.read_text

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    return reads


def test_a_key_file_rewritten_within_one_clock_tick_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two keys of the same length written back to back can leave the same size and
    # timestamps; a file changed that recently is read on every use.
    key_file = tmp_path / "key"
    secret = Secret(file=key_file)
    for key in ("key-aaaa", "key-bbbb", "key-cccc"):
        key_file.write_text(key + "\n")
        assert secret.resolve() == key
    key_file.unlink()
    assert secret.resolve() is None


def test_an_unchanged_key_file_is_not_read_again_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("key-aaaa")
    secret = Secret(file=key_file)
    reads = _count_reads(monkeypatch)
    # Seconds after the last change: the file's status is enough to know it is unchanged.
    clock = [time.time() + 1000]
    monkeypatch.setattr(config_module, "_clock", lambda: clock[0])
    assert [secret.resolve() for _ in range(5)] == ["key-aaaa"] * 5
    assert reads == [key_file]
    # ... for a second: then it is read again (a network file system may answer the
    # status from a cache while the file has changed).
    clock[0] += 1.5
    assert secret.resolve() == "key-aaaa"
    assert secret.resolve() == "key-aaaa"
    assert reads == [key_file] * 2
    # Rotated in place, and rotated by a rename as mounted secrets are.  (The clock moved
    # on above, so these writes count as old ones: a same-length rewrite could fall in the
    # same timestamp tick here, which the test above covers at the real clock.)
    key_file.write_text("key-bbbbbb")
    assert secret.resolve() == "key-bbbbbb"
    staged = tmp_path / "staged"
    staged.write_text("key-cccc")
    staged.replace(key_file)
    assert secret.resolve() == "key-cccc"
    assert secret.resolve() == "key-cccc"
    assert reads == [key_file] * 4
    # Emptied, or gone: no key, at once.
    key_file.write_text("  \n")
    assert secret.resolve() is None
    key_file.unlink()
    assert secret.resolve() is None


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_a_webhook_mapping_path_is_read_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # examples/capirelay.toml named its mapping relative to the repository's root: from any
    # other directory, doctor said "ok" and serve refused to start.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    settings = load_settings(EXAMPLES / "capirelay.toml")
    assert settings.webhooks["crm"].mapping == EXAMPLES / "mappings" / "crm.toml"
    assert not config_checks_fail(settings)
    absolute = tmp_path / "elsewhere.toml"
    config = tmp_path / "conf" / "capirelay.toml"
    config.parent.mkdir()
    config.write_text(
        "[pixels.1234567890]\n"
        '[webhooks.a]\npreset = "mapping"\npixel_id = "1234567890"\n'
        'secret = { env = "X" }\nmapping = "missing.toml"\n'
        f'[webhooks.b]\npreset = "mapping"\npixel_id = "1234567890"\n'
        f'secret = {{ env = "X" }}\nmapping = "{absolute}"\n',
        encoding="utf-8",
    )
    settings = load_settings(config)
    assert settings.webhooks["a"].mapping == config.parent / "missing.toml"
    assert settings.webhooks["b"].mapping == absolute
    failing = config_checks_fail(settings)
    assert [c.detail.split(":")[0] for c in failing] == ["webhooks.a", "webhooks.b"]
    assert "cannot read the mapping file" in failing[0].detail
    assert "config file's directory" in (failing[0].fix or "")


def test_the_example_config_stores_its_outbox_where_its_comment_says() -> None:
    # sqlite:///var/lib/... is relative (three slashes): serve made ./var/lib/capirelay/
    # in whatever directory it ran in.
    settings = load_settings(EXAMPLES / "capirelay.toml")
    assert sqlite_path_from_url(settings.storage) == "/var/lib/capirelay/capirelay.db"


def test_documented_sqlite_urls_are_absolute_or_visibly_relative() -> None:
    # Three slashes then a name reads as an absolute path and is not one: the docs and
    # examples write sqlite:////abs/path.db, or sqlite:///./rel.db for a relative one.
    root = EXAMPLES.parent
    files = [root / "README.md", *(root / "docs").rglob("*.md"), *EXAMPLES.rglob("*.toml")]
    misleading = [
        f"{path.relative_to(root)}: {match.group(0)}"
        for path in files
        for match in re.finditer(r"sqlite:///(?![/.{])\S+", path.read_text(encoding="utf-8"))
    ]
    assert misleading == []


def config_checks_fail(settings: Settings) -> list[Check]:
    """The failing checks of doctor's config row (a webhook mapping that does not load)."""
    return [c for c in config_checks(settings) if c.status is Status.FAIL]


def test_a_mapping_file_that_is_not_utf8_is_a_doctor_row_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_bytes("\ufeff[event]".encode("utf-16"))
    config = tmp_path / "capirelay.toml"
    config.write_text(
        '[pixels.1234567890]\n[webhooks.a]\npreset = "mapping"\npixel_id = "1234567890"\n'
        'secret = { env = "X" }\nmapping = "m.toml"\n',
        encoding="utf-8",
    )
    [failing] = config_checks_fail(load_settings(config))
    assert "not UTF-8 text; save it as UTF-8" in failing.detail


@pytest.mark.parametrize(
    ("graph_url", "problem"),
    [
        # The seed guide's shape: Graph's URL with the version, as Meta's docs print it.
        ("http://127.0.0.1:8765/v26.0", "must not include the Graph API version (/v26.0)"),
        (
            "https://graph.facebook.com/v21.0/1234567890/events",
            "must not include the Graph API version (/v21.0)",
        ),
        ("https://graph.facebook.com/me", "must be Meta's bare origin without a path"),
        ("graph.facebook.com", "must be an http(s) URL with a host"),
        ("http://[::1", "must be an http(s) URL with a host (an IPv6 host in [...])"),
        ("https://graph.facebook.com?x=1", "must not have a query string or fragment"),
    ],
)
def test_a_graph_url_that_cannot_work_is_refused_with_the_fix(
    tmp_path: Path, graph_url: str, problem: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'graph_url = "{graph_url}"\n[pixels.1]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}:1:1: graph_url: ")
    assert problem in message
    assert 'graph_url = "https://graph.facebook.com"' in message


def test_a_graph_url_version_is_refused_from_the_environment_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    monkeypatch.setenv("CAPIRELAY_GRAPH_URL", "https://graph.facebook.com/v26.0/")
    with pytest.raises(ConfigError, match=r"graph_url: .*remove /v26.0 and everything after it"):
        load_settings()


@pytest.mark.parametrize(
    "graph_url",
    [
        "https://graph.facebook.com",
        "https://graph.facebook.com/",
        "http://127.0.0.1:8765",
        # A forwarding proxy that serves Graph under a path prefix (not a version).
        "https://egress.example/meta",
        "https://egress.example/v1/graph",
    ],
)
def test_graph_origins_and_proxy_prefixes_load(graph_url: str) -> None:
    assert Settings(graph_url=graph_url).graph_url == graph_url


def test_a_token_from_the_documented_environment_variable_is_not_called_a_literal_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CAPIRELAY_PIXELS__<ID>__ACCESS_TOKEN`` (what the doctor's own fix suggests) is an
    environment variable: not "a literal in the config file" to move into one, even where
    the file names a token file it overrides; it is read at use time like ``{ env = ... }``."""
    path = tmp_path / "c.toml"
    path.write_text('[pixels.42]\naccess_token = { file = "/run/secrets/none" }\n')
    monkeypatch.setenv("CAPIRELAY_PIXELS__42__ACCESS_TOKEN", "EAAfromTheEnvironment")
    monkeypatch.setenv("CAPIRELAY_INGEST_KEYS__BACKEND__KEY", "key-from-env")
    settings = load_settings(path)
    token = settings.pixels["42"].access_token
    assert token is not None and token.resolve() == "EAAfromTheEnvironment"
    assert token.describe() == "environment variable CAPIRELAY_PIXELS__42__ACCESS_TOKEN"
    assert settings.ingest_keys["backend"].key.resolve() == "key-from-env"
    assert not [w for w in settings.warnings() if "literal" in w], settings.warnings()
    monkeypatch.setenv("CAPIRELAY_PIXELS__42__ACCESS_TOKEN", "EAArotated")
    assert token.resolve() == "EAArotated"
    # A literal in the file itself is still warned about.
    path.write_text('[pixels.42]\naccess_token = "EAAliteral"\n')
    monkeypatch.delenv("CAPIRELAY_PIXELS__42__ACCESS_TOKEN")
    assert any("is a literal in the config file" in w for w in load_settings(path).warnings())


def test_a_quoted_environment_secret_loses_its_quotes_and_an_empty_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker's env_file and many .env files keep the quotes of ``X="..."``: the value
    decoded as JSON (the token without its quotes) is the one used, as before the plain
    variables were read as ``{ env = ... }``.  An empty variable (an unset ``${VAR}`` in a
    compose file) is refused at load, naming the setting, instead of locking /metrics or
    the dashboard without a word."""
    path = tmp_path / "c.toml"
    path.write_text("[pixels.42]\n")
    monkeypatch.setenv("CAPIRELAY_PIXELS__42__ACCESS_TOKEN", '"EAAquoted"')
    token = load_settings(path).pixels["42"].access_token
    assert token is not None and token.resolve() == "EAAquoted"
    monkeypatch.delenv("CAPIRELAY_PIXELS__42__ACCESS_TOKEN")
    for variable in ("CAPIRELAY_METRICS_TOKEN", "CAPIRELAY_INGEST_KEYS__SHOP__KEY"):
        monkeypatch.setenv(variable, "")
        with pytest.raises(ConfigError, match="give exactly one of env, file or value"):
            load_settings(path)
        monkeypatch.delenv(variable)


def test_a_quoted_environment_secret_is_a_literal_said_to_be_in_its_variable_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``X="EAA..."`` kept with its quotes is JSON text: a literal, read once at load.
    It is warned about as what it is (the variable, read as a literal because of its
    quotes: remove them), not as "a literal in the config file" to move into a variable
    it already is; a literal in the file is still told so."""
    path = tmp_path / "c.toml"
    path.write_text('[pixels.42]\n[ingest_keys.shop]\nkey = { env = "UNSET_INGEST_KEY" }\n')
    quoted = {
        "CAPIRELAY_PIXELS__42__ACCESS_TOKEN": ("pixels.42.access_token", '"EAAquoted"'),
        "CAPIRELAY_PIXELS__42__VERIFICATION_SECRET": (
            "pixels.42.verification_secret",
            '"verify-quoted"',
        ),
        "CAPIRELAY_INGEST_KEYS__SHOP__KEY": ("ingest_keys.shop.key", '"key-quoted"'),
    }
    for variable, (_, value) in quoted.items():
        monkeypatch.setenv(variable, value)
    settings = load_settings(path)
    warnings = settings.warnings()
    assert not [w for w in warnings if "config file" in w], warnings
    for variable, (setting, value) in quoted.items():
        (warning,) = [w for w in warnings if w.startswith(f"{setting}:")]
        assert variable in warning and "quotes" in warning and "remove" in warning, warning
        assert value.strip('"') not in warning
    token = settings.pixels["42"].access_token
    assert token is not None and token.resolve() == "EAAquoted"
    assert "config file" not in token.describe()
    assert "CAPIRELAY_PIXELS__42__ACCESS_TOKEN" in token.describe()
    fix = token.how_to_replace("pixels.42.access_token")
    assert "CAPIRELAY_PIXELS__42__ACCESS_TOKEN" in fix and "config file" not in fix
    # The same text written in the file is a literal in the config file.
    path.write_text('[pixels.42]\naccess_token = "EAAquoted"\n')
    monkeypatch.delenv("CAPIRELAY_PIXELS__42__ACCESS_TOKEN")
    assert any(
        w.startswith("pixels.42.access_token is a literal in the config file")
        for w in load_settings(path).warnings()
    )


@pytest.mark.parametrize(
    ("variable", "value", "setting", "inside"),
    [
        (
            "CAPIRELAY_PIXELS",
            '{"1234567890": {"access_token": "EAABs3cret"}}',
            "pixels.1234567890.access_token",
            "1234567890.access_token",
        ),
        (
            "CAPIRELAY_PIXELS__1234567890",
            '{"app_secret": {"value": "EAABs3cret"}}',
            "pixels.1234567890.app_secret",
            "app_secret",
        ),
        (
            "CAPIRELAY_WEBHOOKS",
            '{"shop": {"preset": "shopify", "pixel_id": "1234567890", "secret": "EAABs3cret"}}',
            "webhooks.shop.secret",
            "shop.secret",
        ),
        (
            "CAPIRELAY_DASHBOARD",
            '{"admin_token": "EAABs3cret"}',
            "dashboard.admin_token",
            "admin_token",
        ),
    ],
)
def test_a_literal_secret_inside_a_table_variable_is_said_to_be_in_that_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    setting: str,
    inside: str,
) -> None:
    """``CAPIRELAY_PIXELS='{"1234567890": {"access_token": "EAA..."}}'`` holds a literal in
    the variable's JSON, not in the config file: the warning names the variable and the
    fixes that work there ({"env"} or {"file"} in the JSON, or the secret's own __FILE /
    __ENV variable), never the value."""
    path = tmp_path / "c.toml"
    path.write_text("[pixels.1234567890]\n")
    monkeypatch.setenv(variable, value)
    settings = load_settings(path)
    warnings = [w for w in settings.warnings() if w.startswith(setting)]
    assert len(warnings) == 1, settings.warnings()
    (warning,) = warnings
    assert warning.startswith(
        f"{setting} is a literal inside the JSON of the environment variable {variable}; "
    ), warning
    assert "config file" not in warning
    assert f'in the JSON of {variable}, set "{inside}" to {{"env": "..."}}' in warning
    assert '{"file": "..."}' in warning
    own = "CAPIRELAY_" + setting.replace(".", "__").upper()
    assert f"{own}__FILE" in warning and f"{own}__ENV" in warning
    assert "EAABs3cret" not in " ".join(settings.warnings())
    secret = _secret_at(settings, setting)
    assert secret.resolve() == "EAABs3cret"
    assert (
        secret.describe() == f"literal value inside the JSON of the environment variable {variable}"
    )
    assert variable in secret.how_to_replace(setting)
    assert "config file" not in secret.how_to_replace(setting)
    # The fix it names works: the literal taken out of the JSON, its own __FILE variable set.
    token = tmp_path / "token"
    token.write_text("from-the-file\n")
    monkeypatch.setenv(variable, _without(value, setting.rpartition(".")[2]))
    monkeypatch.setenv(f"{own}__FILE", str(token))
    settings = load_settings(path)
    assert not [w for w in settings.warnings() if "literal" in w], settings.warnings()
    assert _secret_at(settings, setting).resolve() == "from-the-file"


def _secret_at(settings: Settings, setting: str) -> Secret:
    """The secret at the dotted ``setting`` (``pixels.42.access_token``)."""
    value: Any = settings
    for part in setting.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    assert isinstance(value, Secret)
    return value


def _without(text: str, key: str) -> str:
    """The JSON ``text`` without ``key`` wherever it is."""

    def drop(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k != key}
        return value

    return json.dumps(drop(json.loads(text)))


# Every secret-typed setting, by the CAPIRELAY_... variable that sets it as plain text.
SECRET_VARIABLES = {
    "CAPIRELAY_PIXELS__42__ACCESS_TOKEN": lambda s: s.pixels["42"].access_token,
    "CAPIRELAY_PIXELS__42__APP_SECRET": lambda s: s.pixels["42"].app_secret,
    "CAPIRELAY_PIXELS__42__VERIFICATION_SECRET": lambda s: s.pixels["42"].verification_secret,
    "CAPIRELAY_INGEST_KEYS__SHOP__KEY": lambda s: s.ingest_keys["shop"].key,
    "CAPIRELAY_WEBHOOKS__SHOP__SECRET": lambda s: s.webhooks["shop"].secret,
    "CAPIRELAY_DASHBOARD__ADMIN_TOKEN": lambda s: s.dashboard.admin_token,
    "CAPIRELAY_DASHBOARD__BASIC_PASSWORD": lambda s: s.dashboard.basic_password,
    "CAPIRELAY_METRICS_TOKEN": lambda s: s.metrics_token,
}


@pytest.mark.parametrize("variable", SECRET_VARIABLES)
@pytest.mark.parametrize("text", ["123456789012345678901234", "1e5", "0.50", " 42 ", "true"])
def test_a_secret_set_as_digits_in_the_environment_is_read_as_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, text: str
) -> None:
    """A webhook secret or ingest key may be all digits (or look like another JSON value):
    it is text, read from its variable like any other, not a number refused with
    "input should be a valid dictionary".  Its text is kept as written ("0.50", not 0.5)."""
    path = tmp_path / "c.toml"
    path.write_text(
        '[pixels.42]\n[webhooks.shop]\npreset = "shopify"\npixel_id = "42"\n'
        'secret = { env = "UNSET_WEBHOOK_SECRET" }\n'
        '[ingest_keys.shop]\nkey = { env = "UNSET_INGEST_KEY" }\n'
    )
    monkeypatch.setenv(variable, text)
    settings = load_settings(path)
    secret = SECRET_VARIABLES[variable](settings)
    assert secret is not None
    assert secret.resolve() == text.strip()
    assert secret.describe() == f"environment variable {variable}"
    assert not [w for w in settings.warnings() if "literal" in w], settings.warnings()


def test_numeric_settings_beside_a_numeric_secret_stay_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[pixels.42]\n")
    monkeypatch.setenv("CAPIRELAY_INGEST_KEYS__SHOP__KEY", "987654321098765432109876")
    monkeypatch.setenv("CAPIRELAY_INGEST_KEYS__SHOP__EVENTS_PER_SECOND", "2.5")
    monkeypatch.setenv("CAPIRELAY_INGEST_KEYS__SHOP__BURST", "5")
    monkeypatch.setenv("CAPIRELAY_PORT", "9000")
    monkeypatch.setenv("CAPIRELAY_DELIVERY__BATCH_SIZE", "250")
    settings = load_settings(path)
    key = settings.ingest_keys["shop"]
    assert key.key.resolve() == "987654321098765432109876"
    assert (key.events_per_second, key.burst) == (2.5, 5)
    assert (settings.port, settings.delivery.batch_size) == (9000, 250)
    # A table given as JSON is still a table.
    monkeypatch.setenv("CAPIRELAY_INGEST_KEYS__SHOP__KEY", '{"env": "SHOP_KEY"}')
    monkeypatch.setenv("SHOP_KEY", "from-shop-key")
    assert load_settings(path).ingest_keys["shop"].key.resolve() == "from-shop-key"


def test_a_relative_secret_file_is_read_beside_the_config_like_a_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``{ file = "secrets/token" }`` in a config kept in a repository names the file
    beside it, as a relative ``mapping`` does: ``serve --config /srv/shop/capirelay.toml``
    from another directory (systemd's is /) said the token file was missing and held
    every event, while ``capirelay doctor`` run from the config's directory said ok."""
    config = tmp_path / "repo" / "capirelay.toml"
    (config.parent / "secrets").mkdir(parents=True)
    (config.parent / "secrets" / "token").write_text("EAAbeside\n")
    (config.parent / "secrets" / "ingest").write_text("key-beside\n")
    config.write_text(
        '[pixels.42]\naccess_token = { file = "secrets/token" }\n'
        '[ingest_keys.backend]\nkey = { file = "secrets/ingest" }\n'
        f'[dashboard]\nadmin_token = {{ file = "{tmp_path / "absolute"}" }}\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    settings = load_settings(config)
    token = settings.pixels["42"].access_token
    assert token is not None and token.resolve() == "EAAbeside"
    assert token.describe() == f"file {config.parent / 'secrets' / 'token'}"
    assert settings.ingest_keys["backend"].key.resolve() == "key-beside"
    admin = settings.dashboard.admin_token
    assert admin is not None and admin.file == tmp_path / "absolute"  # absolute: as written


def test_a_secret_file_left_where_older_versions_read_it_is_pointed_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment whose relative secret file sits in the working directory (read from
    there before secrets were read beside the config) is told at load where the file is
    now looked for and where it still is, not only "missing" at the first delivery."""
    config = tmp_path / "etc" / "capirelay.toml"
    config.parent.mkdir()
    config.write_text('[pixels.42]\naccess_token = { file = "secrets/token" }\n')
    workdir = tmp_path / "var"
    (workdir / "secrets").mkdir(parents=True)
    (workdir / "secrets" / "token").write_text("EAAold\n")
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    with caplog.at_level("WARNING", logger="capirelay.config"):
        settings = load_settings(config)
    token = settings.pixels["42"].access_token
    assert token is not None and token.file == config.parent / "secrets" / "token"
    assert any(
        "now read beside the config file" in r.getMessage()
        and str(workdir / "secrets" / "token") in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_a_home_relative_secret_file_without_a_home_directory_loads_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``{ file = "~/token" }`` for a user with no HOME and no passwd entry (a container's
    arbitrary UID) stopped the load with a traceback ("Could not determine home
    directory"); the path is kept as written and reported missing like any other."""
    import pwd

    config = tmp_path / "capirelay.toml"
    config.write_text('[pixels.42]\naccess_token = { file = "~/token" }\n')
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)

    def no_entry(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(RuntimeError):
        Path("~/token").expanduser()  # the condition this test stands in for
    token = load_settings(config).pixels["42"].access_token
    assert token is not None and token.resolve() is None
