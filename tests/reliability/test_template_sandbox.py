"""Hostile user templates: sandbox escapes, endless loops, memory bombs. Each is refused or
bounded with a clear error naming the file and line; the mail still goes out with the
built-in template; the daemon keeps running."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from notifier.check import sample_mails
from notifier.mail.render import Renderer, TemplateFailed
from tests.helpers import wait_for

SET_DOUBLING = (
    "{% set a = 'x' * 99999 %}"
    + "".join(f"{{% set a{i + 1} = a{i} ~ a{i} %}}" for i in range(40)).replace("a0", "a")
    + "{{ a40 }}"
)
PLUS_DOUBLING = (
    "{% set a = 'x' * 99999 %}"
    + "".join(f"{{% set a{i + 1} = a{i} + a{i} %}}" for i in range(40)).replace("a0", "a")
    + "{{ a40|length }}"
)

HOSTILE = {
    # sandbox escapes
    "mro": "{{ ''.__class__.__mro__ }}",
    "cycler-globals": "{{ cycler.__init__.__globals__ }}",
    "subclasses": "{{ ().__class__.__base__.__subclasses__() }}",
    "format-attribute": "{{ '{0.__class__.__mro__}'.format(items) }}",
    "template-reference": "{{ self._TemplateReference__context }}",
    "mutation": "{% set l = [] %}{{ l.append(1) }}",
    "path-traversal": "{% include '../../../../../../etc/passwd' %}",
    "undefined": "line 1\n{{ no_such_variable }}",
    # work and memory
    "huge-loop": "{% for i in range(10**9) %}x{% endfor %}",
    "nested-loops": "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}",
    "repeat": "{{ 'x' * 10**8 }}",
    "power": "{{ 2 ** 64 ** 64 ** 64 ** 64 ** 64 ** 64 }}",
    "lipsum": "{{ lipsum(n=1000000) }}",
    "percent-width": "{{ '%099999999999d' % 1 }}",
    "format-filter-width": "{{ '%099999999999d'|format(1) }}",
    "str-format-width": "{{ '{:099999999999}'.format(1) }}",
    "center": "{{ 'ab'|center(99999999999) }}",
    "join-amplify": "{{ (('x' * 99999)|list)|join('y' * 99999) }}",
    "replace-amplify": "{{ ('x' * 99999)|replace('', 'y' * 99999) }}",
    "concat-doubling": SET_DOUBLING,
    "plus-doubling": PLUS_DOUBLING,
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "self-include": "{% include 'alert.txt.j2' %}",
    "output-flood": "{% for i in range(150000) %}{{ 'x' * 99 }}{% endfor %}",
}
SECONDS_PER_CASE = 15  # generous for 2 shared cores; a healthy case takes well under a second


def _renderer(tmp_path: Path, name: str, source: str, *, strict: bool) -> Renderer:
    d = tmp_path / name
    d.mkdir()
    (d / "alert.txt.j2").write_text(source)
    r = Renderer(str(d), "nas01")
    r.strict = strict
    return r


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_is_refused_or_bounded(tmp_path, name):
    source = HOSTILE[name]
    mail = sample_mails("nas01")[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(TemplateFailed) as failed:
        _renderer(tmp_path, "strict", source, strict=True).render(mail)
    assert time.monotonic() - started < SECONDS_PER_CASE
    assert "alert.txt.j2" in str(failed.value)
    # Without strict (the daemon), the built-in template renders instead, and the error is kept.
    lenient = _renderer(tmp_path, "lenient", source, strict=False)
    subject, text, html = lenient.render(mail)
    assert "/srv is 92% full" in text and "root:" not in text
    assert lenient.errors and "alert.txt.j2" in lenient.errors[0]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 300, f"rendering {name} grew this process by {grown_mb:.0f} MB"
    assert time.monotonic() - started < 2 * SECONDS_PER_CASE


def test_errors_with_a_line_name_it(tmp_path):
    line_cases = ["mro", "undefined", "huge-loop", "path-traversal", "recursion", "mutation"]
    for name in line_cases:
        d = tmp_path / name
        d.mkdir()
        (d / "alert.txt.j2").write_text("\n\n" + HOSTILE[name] + "\n")
        r = Renderer(str(d), "nas01")
        r.strict = True
        with pytest.raises(TemplateFailed) as failed:
            r.render(sample_mails("nas01")[0])
        assert failed.value.line and failed.value.line >= 3, (name, str(failed.value))


def test_daemon_keeps_mailing_with_the_builtin_template_and_check_names_file_and_line(
    rig, tmp_path
):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "subject.txt.j2").write_text("{{ 'x' }}\n{{ ''.__class__.__mro__ }}\n")
    (templates / "alert.txt.j2").write_text("{% for i in range(10**9) %}x{% endfor %}\n")
    (templates / "alert.html.j2").write_text("{{ '%099999999999d' % 1 }}\n")
    rig.configure(templates_dir=str(templates))
    daemon = rig.start()
    rig.send("pool degraded", "critical")
    (m,) = rig.catcher.wait_for(1, timeout=30)
    assert m.message["Subject"] == "[nas01] CRITICAL: pool degraded"
    assert "pool degraded" in m.message.get_body(("plain",)).get_content()
    status = rig.status()
    assert any("subject.txt.j2" in e for e in status["template_errors"]), status["template_errors"]
    wait_for(lambda: "used the built-in one" in daemon.log(), 10, "the template error in the log")
    out = rig.cli("check", "-c", str(rig.config))
    report = out.stdout + out.stderr
    assert out.returncode == 2, report
    assert f"{templates}/subject.txt.j2:2:" in report and "unsafe" in report
    assert f"{templates}/alert.txt.j2:1:" in report and "loops more than" in report
    assert "Traceback" not in report
    rig.send("second event", "warning")
    rig.catcher.wait_for(2, timeout=30)
    assert daemon.proc.poll() is None
