"""The config file: the example stays complete and valid; errors name file, line and key."""

from __future__ import annotations

import re

import pytest

from notifier import schema, sources
from notifier.config import (
    ConfigInvalid,
    _LazySourceList,
    default_config_path,
    load_config,
    parse_config,
    top_schema,
)
from tests.helpers import REPO

MINIMAL = "smtp: {host: smtp.example.com, from: a@example.com, to: [b@example.com]}\n"


def option_names(field: schema.Field, path: str = "") -> set[tuple[str, str]]:
    """(path, name) of every option the schema knows, sources included."""
    out: set[tuple[str, str]] = set()
    if isinstance(field, _LazySourceList):
        field = sources.get(field.name).entry
    elif isinstance(field, schema.List):
        field = field.item
    if isinstance(field, schema.Map):
        for name, sub in field.fields.items():
            out.add((path, name))
            out |= option_names(sub, f"{path}.{name}" if path else name)
    return out


def test_the_example_config_is_valid():
    conf = load_config(REPO / "config.yaml.example")
    assert conf["smtp"]["host"] == "smtp.example.com"
    assert set(conf["sources"]) >= {"disk", "services"}


def test_the_example_config_documents_every_option():
    text = (REPO / "config.yaml.example").read_text()
    documented = set(re.findall(r"^[ \t]*(?:#[ \t]*)?(?:-[ \t]+)?([a-z_]+):", text, re.M))
    missing = sorted(
        f"{p}.{n}" if p else n for p, n in option_names(top_schema()) if n not in documented
    )
    assert not missing, f"config.yaml.example does not mention: {', '.join(missing)}"
    for name in sources.names():
        assert re.search(rf"^  {name}:", text, re.M), f"no example of sources.{name}"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(text, "c.yaml")
    return info.value.report().splitlines()


def test_every_error_at_once_with_line_and_path():
    lines = problems("""\
smtp:
  host: smtp.example.com
  port: 99999
  security: starttlss
  from: not-an-address
  to: []
policy:
  group_wait: soon
  max_per_hour: 0
  send_resolved: "yes"
""")
    assert lines == [
        "c.yaml:3: smtp.port: must be 1..65535, got 99999",
        "c.yaml:4: smtp.security: must be one of tls, starttls, none, got 'starttlss'",
        "c.yaml:5: smtp.from: must be an e-mail address like 'NAS <alerts@example.com>', got 'not-an-address'",
        "c.yaml:6: smtp.to: needs at least 1 item(s)",
        "c.yaml:8: policy.group_wait: must be a duration like 30s, 5m, 4h, got 'soon'",
        "c.yaml:9: policy.max_per_hour: must be 1..3600, got 0",
        "c.yaml:10: policy.send_resolved: must be true or false, got 'yes'",
    ]


def test_unknown_keys_suggest_the_nearest_and_password_is_refused_with_directions():
    lines = problems(MINIMAL + "polcy:\n  group_wait: 1s\nsmtp2: 1\n")
    assert lines[0].startswith("c.yaml:2: polcy: unknown option; did you mean 'policy'?")
    text = "smtp:\n  host: h.example.com\n  from: a@example.com\n  to: [b@example.com]\n  password: hunter2\n"
    (line,) = problems(text)
    assert line.startswith("c.yaml:5: smtp.password: the password must not sit in the YAML file")
    assert "set-password" in line and "password_file" in line and "hunter2" not in line


def test_security_none_only_to_loopback_and_never_with_a_password():
    lines = problems(
        "smtp: {host: mail.example.com, security: none, username: u, from: a@example.com, to: [b@example.com]}\n"
    )
    assert any("smtp.host: security: none sends mail in clear" in line for line in lines)
    assert any("smtp.username: security: none never sends a password" in line for line in lines)
    conf = parse_config(
        "smtp: {host: 127.0.0.1, security: none, from: a@example.com, to: [b@example.com]}\n"
    )
    assert conf["smtp"]["port"] == 25


def test_defaults_and_durations():
    conf = parse_config(MINIMAL + "policy: {group_wait: 0s, repeat_interval: 1d}\n")
    assert conf["smtp"]["port"] == 465 and conf["smtp"]["security"] == "tls"
    assert conf["policy"]["group_wait"] == 0.0 and conf["policy"]["repeat_interval"] == 86400.0
    assert conf["policy"]["max_per_hour"] == 20 and conf["sources"] == {}
    assert parse_config(MINIMAL.replace("}", ", security: starttls}"))["smtp"]["port"] == 587


def test_yaml_syntax_error_and_duplicate_key_have_lines():
    (line,) = problems("smtp:\n  host: [unclosed\n")
    assert re.match(r"c\.yaml:\d+: invalid YAML", line)
    (line,) = problems(MINIMAL + "host_label: a\nhost_label: b\n")
    assert line.startswith("c.yaml:3: duplicate key 'host_label' (first on line 2)")


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(ConfigInvalid, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"host_label: caf\xe9\n")
    with pytest.raises(ConfigInvalid, match="not UTF-8"):
        load_config(bad)


def test_default_path_from_environment(monkeypatch):
    monkeypatch.delenv("NOTIFIER_CONFIG", raising=False)
    assert default_config_path() == "/etc/notifier/config.yaml"
    monkeypatch.setenv("NOTIFIER_CONFIG", "/srv/n.yaml")
    assert default_config_path() == "/srv/n.yaml"


def test_template_syntax_error_in_templates_dir_names_file_and_line(tmp_path):
    (tmp_path / "subject.txt.j2").write_text("ok\n{% if %}\n")
    (line,) = problems(MINIMAL + f"templates_dir: {tmp_path}\n")
    assert f"{tmp_path}/subject.txt.j2:2:" in line
