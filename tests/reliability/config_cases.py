"""The table of broken configs for test_config_fuzz: each case is a file, the line and key
path its error must name, and words the message must say."""

from __future__ import annotations

from dataclasses import dataclass

# The smtp: block every case starts from; its lines are 1..6, then added smtp keys, then
# state_dir, then the case's own text.
SMTP_KEYS = {
    "host": "smtp.example.com",
    "username": "alerts@example.com",
    "password_file": "{pw}",
    "from": '"nas01 <alerts@example.com>"',
    "to": "[admin@example.com]",
}


def cfg(extra: str = "", state_dir: str = "{state}", **smtp: str | None) -> str:
    """A config: the smtp block with `smtp` keys replaced in place (None drops one, new ones
    go last), then `state_dir`, then `extra`."""
    keys = dict(SMTP_KEYS)
    for key, value in smtp.items():
        key = key.rstrip("_")  # from_ for from
        if value is None:
            keys.pop(key, None)
        else:
            keys[key] = value
    lines = ["smtp:", *(f"  {k}: {v}" for k, v in keys.items()), f"state_dir: {state_dir}"]
    return "\n".join(lines) + "\n" + extra


# A billion laughs: nine levels of nine aliases. Expanded, it is 387 million strings.
BOMB = "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}' if i else 'lol'] * 9)}]\n" for i in range(9))


# A logs entry: `sources:` is line 8, the rule's first key line 12, `match:` line 13.
LOGS = """sources:
  logs:
    - path: {path}
      rules:
        - name: r
          {rule}
"""


@dataclass
class Case:
    id: str
    text: str | bytes | None  # None: the case builds the file itself (see `special`)
    line: int | None  # None: a problem of the whole file, no line to point at
    path: str  # the key path the message names ("" for YAML syntax errors)
    words: str  # something the message must say
    config_error: bool = True  # the file itself is invalid: `run` refuses it too
    mode: int = 0o600


CASES = [
    # -- YAML that does not parse ----------------------------------------------------------
    Case("yaml-unclosed-flow", cfg(to="[admin@example.com"), 7, "", "flow sequence (from line 6)"),
    Case("yaml-tab-indent", "smtp:\n\thost: smtp.example.com\n", 2, "", "invalid YAML"),
    Case("yaml-duplicate-key", cfg("state_dir: /tmp\n"), 8, "", "duplicate key 'state_dir'"),
    Case("yaml-bad-indent", cfg(username="a@example.com\n   oops: 1"), 4, "", "invalid YAML"),
    Case("yaml-unclosed-quote", cfg(from_='"nas01 <alerts@example.com>'), 5, "", "invalid YAML"),
    Case("yaml-two-documents", cfg("---\nsmtp: {}\n"), 8, "", "single document"),
    Case(
        "yaml-python-tag",
        cfg("host_label: !!python/object/apply:os.system ['touch /tmp/pwned']\n"),
        8,
        "",
        "invalid YAML",
    ),
    Case("yaml-recursive-alias", cfg("policy: &p\n  x: *p\n"), 8, "", "invalid YAML"),
    Case("yaml-nul-byte", cfg("host_label: nas\x0001\n"), 8, "", "invalid YAML"),
    Case("yaml-complex-key", cfg("? [a, b]\n: 1\n"), 8, "", "a key must be a plain word"),
    Case("yaml-not-a-mapping", "- smtp\n- policy\n", 1, "", "must be a mapping of options"),
    Case(
        "yaml-alias-bomb-in-duration",
        cfg(BOMB + "policy:\n  group_wait: *b8\n"),
        18,
        "policy.group_wait",
        "must be a duration",
    ),
    # An alias's items carry the line of the anchor they expand (b7's, line 15).
    Case(
        "yaml-alias-bomb-in-list",
        cfg(BOMB + "sources:\n  disk: *b8\n"),
        15,
        "sources.disk[0]",
        "must be a mapping",
    ),
    # -- wrong types and values in smtp ------------------------------------------------------
    Case("smtp-not-a-mapping", "smtp: smtp.example.com\n", 1, "smtp", "must be a mapping"),
    Case("smtp-port-text", cfg(port="abc"), 7, "smtp.port", "must be a whole number"),
    Case("smtp-port-range", cfg(port="99999"), 7, "smtp.port", "must be 1..65535"),
    Case("smtp-port-float", cfg(port="465.0"), 7, "smtp.port", "must be a whole number"),
    Case("smtp-security-choice", cfg(security="ssl"), 7, "smtp.security", "must be one of tls"),
    Case("smtp-host-missing", cfg(host=None), 1, "smtp.host", "is required"),
    Case("smtp-to-empty", cfg(to="[]"), 6, "smtp.to", "needs at least 1 item"),
    Case("smtp-to-mapping", cfg(to="{admin: example.com}"), 6, "smtp.to[0]", "must be text"),
    Case(
        "smtp-to-header-injection",
        cfg(to='["admin@example.com\\r\\nBcc: x@evil.example"]'),
        6,
        "smtp.to[0]",
        "must be an e-mail address",
    ),
    Case(
        "smtp-to-two-in-one",
        cfg(to='["admin@example.com, boss@example.com"]'),
        6,
        "smtp.to[0]",
        "must be an e-mail address",
    ),
    Case(
        "smtp-from-comment",
        cfg(from_='"alerts@example.com (nas01)"'),
        5,
        "smtp.from",
        "must be an e-mail address",
    ),
    Case(
        "smtp-from-non-ascii-user",
        cfg(from_='"ålerts@example.com"'),
        5,
        "smtp.from",
        "must be an e-mail address",
    ),
    Case(
        "smtp-none-to-remote",
        cfg(security="none", username=None, password_file=None),
        2,
        "smtp.host",
        "security: none sends mail in clear",
    ),
    Case(
        "smtp-starttls-on-465",
        cfg(security="starttls", port="465"),
        8,
        "smtp.port",
        "port 465 speaks implicit TLS",
    ),
    Case(
        "smtp-password-in-yaml",
        cfg(password="hunter2-in-yaml"),
        7,
        "smtp.password",
        "must not sit in the YAML file",
    ),
    Case("smtp-timeout-zero", cfg(timeout="0s"), 7, "smtp.timeout", "must be at least 1s"),
    Case(
        "smtp-ca-file-missing",
        cfg(ca_file="/nonexistent/ca.pem"),
        7,
        "smtp.ca_file",
        "no such file",
    ),
    Case("smtp-ca-file-not-pem", cfg(ca_file="{notpem}"), 7, "smtp.ca_file", "PEM"),
    # -- unknown keys ---------------------------------------------------------------------
    Case("unknown-top-key", cfg("state_dri: /tmp\n"), 8, "state_dri", "did you mean 'state_dir'"),
    Case(
        "unknown-policy-key",
        cfg("policy:\n  group_wiat: 5s\n"),
        9,
        "policy.group_wiat",
        "did you mean 'group_wait'",
    ),
    Case(
        "unknown-source", cfg("sources:\n  disks: []\n"), 9, "sources.disks", "did you mean 'disk'"
    ),
    Case("unknown-numeric-key", cfg("42: answer\n"), 8, "42", "unknown option"),
    Case(
        "unknown-disk-option",
        cfg("sources:\n  disk:\n    - mount: /srv\n"),
        10,
        "sources.disk[0].mount",
        "unknown option",
    ),
    # -- policy, top level -------------------------------------------------------------------
    Case("policy-not-a-mapping", cfg("policy: [1, 2]\n"), 8, "policy", "must be a mapping"),
    Case(
        "send-resolved-text",
        cfg('policy:\n  send_resolved: "yes"\n'),
        9,
        "policy.send_resolved",
        "must be true or false",
    ),
    Case(
        "max-per-hour-zero",
        cfg("policy:\n  max_per_hour: 0\n"),
        9,
        "policy.max_per_hour",
        "must be 1..3600",
    ),
    Case(
        "burst-float", cfg("policy:\n  burst: 1.5\n"), 9, "policy.burst", "must be a whole number"
    ),
    Case("host-label-list", cfg("host_label: [a, b]\n"), 8, "host_label", "must be text"),
    Case("state-dir-empty", cfg(state_dir='""'), 7, "state_dir", "must not be empty"),
    # -- durations -----------------------------------------------------------------------------
    Case(
        "duration-words",
        cfg("policy:\n  group_wait: 5 minutes\n"),
        9,
        "policy.group_wait",
        "must be a duration",
    ),
    Case(
        "duration-negative",
        cfg("policy:\n  repeat_interval: -1h\n"),
        9,
        "policy.repeat_interval",
        "must be a duration",
    ),
    Case(
        "duration-infinite", cfg("policy:\n  group_wait: .inf\n"), 9, "policy.group_wait", "finite"
    ),
    Case(
        "duration-nan",
        cfg("policy:\n  repeat_interval: .nan\n"),
        9,
        "policy.repeat_interval",
        "finite",
    ),
    Case(
        "duration-retry-zero",
        cfg("policy:\n  retry_max: 0s\n"),
        9,
        "policy.retry_max",
        "must be at least 1s",
    ),
    Case(
        "duration-mapping",
        cfg("policy:\n  group_wait: {s: 30}\n"),
        9,
        "policy.group_wait",
        "must be a duration",
    ),
    Case(
        "disk-every-words",
        cfg("sources:\n  disk:\n    - every: soon\n"),
        10,
        "sources.disk[0].every",
        "must be a duration",
    ),
    Case(
        "disk-percent-over",
        cfg("sources:\n  disk:\n    - warning: 180%\n"),
        10,
        "sources.disk[0].warning",
        "between 0% and 100%",
    ),
    # -- log rules: regular expressions and their templates ------------------------------------
    Case(
        "logs-path-relative",
        cfg(LOGS.format(path="auth.log", rule="match: x")),
        10,
        "sources.logs[0].path",
        "must be an absolute path",
    ),
    Case(
        "logs-rules-missing",
        cfg("sources:\n  logs:\n    - path: /var/log/auth.log\n"),
        10,
        "sources.logs[0].rules",
        "is required",
    ),
    Case(
        "regex-unbalanced",
        cfg(LOGS.format(path="/var/log/auth.log", rule="match: '(unclosed'")),
        13,
        "sources.logs[0].rules[0].match",
        "missing )",
    ),
    Case(
        "regex-lookahead",
        cfg(LOGS.format(path="/var/log/auth.log", rule="match: 'a(?=b)'")),
        13,
        "sources.logs[0].rules[0].match",
        "RE2 does not support lookahead",
    ),
    Case(
        "regex-backreference",
        cfg(LOGS.format(path="/var/log/a.log", rule="match: '(a)\\1'")),
        13,
        "sources.logs[0].rules[0].match",
        "backreferences",
    ),
    Case(
        "regex-possessive",
        cfg(LOGS.format(path="/var/log/a.log", rule="match: 'a++'")),
        13,
        "sources.logs[0].rules[0].match",
        "possessive",
    ),
    Case(
        "regex-any-byte",
        cfg(LOGS.format(path="/var/log/a.log", rule="match: 'a\\Cb'")),
        13,
        "sources.logs[0].rules[0].match",
        "any byte",
    ),
    Case(
        "rule-key-syntax",
        cfg(
            LOGS.format(path="/var/log/a.log", rule="match: '(?P<ip>\\S+)'\n          key: '{{ ip'")
        ),
        14,
        "sources.logs[0].rules[0].key",
        "invalid template",
    ),
    Case(
        "rule-key-unknown-group",
        cfg(LOGS.format(path="/var/log/a.log", rule="match: 'x'\n          key: '{{ ip }}'")),
        12,
        "sources.logs[0].rules[0]",
        "which match does not capture",
    ),
    # -- templates ----------------------------------------------------------------------------
    Case(
        "templates-dir-missing",
        cfg("templates_dir: /nonexistent/templates\n"),
        8,
        "templates_dir",
        "is not a directory",
    ),
    Case(
        "template-syntax-error",
        cfg("templates_dir: {tpl}\n"),
        8,
        "templates_dir",
        "alert.txt.j2:3:",
    ),
    Case(
        "template-unknown-name",
        cfg("templates_dir: {tpl_unknown}\n"),
        8,
        "templates_dir",
        "not a template notifier uses",
    ),
    # -- files: the config itself, and the password ----------------------------------------
    Case("config-missing", None, None, "", "no such file"),
    Case("config-is-a-directory", None, None, "", "is a directory"),
    Case("config-not-utf8", b"smtp:\n  host: caf\xe9.example.com\n", None, "", "not UTF-8"),
    Case("config-unreadable", cfg(), None, "", "permission denied", mode=0o600),
    Case(
        "password-file-missing",
        cfg(password_file="/nonexistent/smtp-password"),
        4,
        "smtp.password_file",
        "does not exist",
        config_error=False,
    ),
    Case(
        "password-file-empty",
        cfg(password_file="{empty_pw}"),
        4,
        "smtp.password_file",
        "is empty",
        config_error=False,
    ),
    Case(
        "password-file-world-readable",
        cfg(password_file="{public_pw}"),
        4,
        "smtp.password_file",
        "chmod 600",
        config_error=False,
    ),
    Case(
        "password-missing",
        cfg(password_file=None),
        3,
        "smtp.username",
        "no password was found",
        config_error=False,
    ),
]
