"""Mails from templates: Jinja in a sandbox, built-in templates overridable by name.

A user template that fails (syntax, undefined name, sandbox refusal, too
much work) never stops a mail: the built-in template renders instead and the
failure is logged and kept for `status`.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import resource
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from notifier import units
from notifier.events import Severity
from notifier.policy import Item, Mail

log = logging.getLogger("notifier.render")

TEMPLATES = (
    "subject.txt.j2",
    "alert.txt.j2",
    "alert.html.j2",
    "digest.txt.j2",
    "digest.html.j2",
    "_item.txt.j2",
    "_item.html.j2",
)
MAX_OUTPUT = 2_000_000  # characters a template may produce
MAX_ITERATIONS = 200_000  # `range` steps a template may take, all loops together
MAX_SEQUENCE = 100_000  # length of a string or list made with * or **
MAX_ITEMS_LISTED = 200  # items a mail lists one by one; the rest are summed up

# A user template renders in a child process with these limits, so no expression (a format
# width, a doubling concatenation, a huge power) can take the daemon's memory or time.
RENDER_MEMORY = 256 * 1024 * 1024  # bytes of address space a render may add
RENDER_CPU_SECONDS = 5

_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("budget")


def builtin_dir() -> Path:
    """The shipped templates: inside the installed package, or `templates/` in a source tree."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "templates"
    if (installed / "subject.txt.j2").is_file():
        return installed
    return package.parent / "templates"


class TemplateFailed(Exception):
    """A user template failed to render; names the file and line."""

    def __init__(self, name: str, exc: BaseException) -> None:
        line = getattr(exc, "lineno", None) or _template_line(exc, name)
        self.name, self.line = name, line
        where = f"{name}:{line}" if line else name
        super().__init__(f"{where}: {getattr(exc, 'kind', type(exc).__name__)}: {exc}")


def _template_line(exc: BaseException, name: str) -> int | None:
    """The line in template `name` where a render-time error happened (from the traceback)."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(name):
            line = tb.tb_lineno  # jinja rewrites template frames to their template line numbers
        tb = tb.tb_next
    return line


class TemplateBudgetExceeded(SecurityError):
    """A template tried to do more work than a mail needs."""


class _ChildFailure(Exception):
    """How a user template failed in the rendering child: its kind, words and line."""

    def __init__(self, kind: str, message: str, lineno: int | None) -> None:
        super().__init__(message)
        self.kind, self.lineno = kind, lineno


def _limit_this_process() -> None:
    """In the rendering child: at most RENDER_MEMORY more address space, RENDER_CPU_SECONDS."""
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + RENDER_MEMORY, size + RENDER_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (RENDER_CPU_SECONDS, RENDER_CPU_SECONDS + 1))


def _run_isolated(env: LimitedSandbox, name: str, ctx: dict[str, Any]) -> str:
    """`render_bounded` in a forked child under resource limits; _ChildFailure if it fails."""
    env.get_template(name)  # compile here: a syntax error is reported as usual, and cached
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: render, answer through the pipe, exit without any cleanup
        try:
            os.close(read_fd)
            _limit_this_process()
            try:
                answer = {"text": render_bounded(env, name, ctx)}
            except BaseException as exc:
                line = getattr(exc, "lineno", None) or _template_line(exc, name)
                answer = {"kind": type(exc).__name__, "error": str(exc)[:2000], "line": line}
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(json.dumps(answer).encode("utf-8", "surrogatepass"))
        finally:
            os._exit(0)
    os.close(write_fd)
    data = bytearray()
    deadline = time.monotonic() + 2 * RENDER_CPU_SECONDS + 5  # CPU limit, plus time to be scheduled
    with os.fdopen(read_fd, "rb") as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(pipe.fileno(), 1 << 20) if ready else b""
            if not chunk:
                break
            data += chunk
    if time.monotonic() >= deadline:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    try:
        answer = json.loads(data.decode("utf-8", "surrogatepass"))
    except ValueError:
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
            raise _ChildFailure(
                "TemplateBudgetExceeded",
                f"template took more than {RENDER_CPU_SECONDS}s of CPU time",
                None,
            ) from None
        raise _ChildFailure(
            "TemplateBudgetExceeded",
            f"template needed more than {RENDER_MEMORY >> 20} MiB of memory or crashed",
            None,
        ) from None
    if "text" in answer:
        return answer["text"]
    if answer["kind"] == "MemoryError":
        answer["error"] = f"template needed more than {RENDER_MEMORY >> 20} MiB of memory"
    raise _ChildFailure(answer["kind"], answer["error"], answer["line"])


def _limited_range(*args: int) -> Iterator[int]:
    budget = _budget.get([MAX_ITERATIONS])
    for i in range(*args):
        budget[0] -= 1
        if budget[0] < 0:
            raise TemplateBudgetExceeded(f"template loops more than {MAX_ITERATIONS} times")
        yield i


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus bounds on loops, repetition and output size."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int) and abs(right) > 64:
                raise TemplateBudgetExceeded("exponent too large in template")
            return left**right
        for seq, n in ((left, right), (right, left)):
            if (
                isinstance(seq, str | list | tuple)
                and isinstance(n, int)
                and len(seq) * n > MAX_SEQUENCE
            ):
                raise TemplateBudgetExceeded(
                    f"template builds a sequence longer than {MAX_SEQUENCE}"
                )
        return left * right


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _clock(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%H:%M:%S") if ts else ""


def _severity(value: int | None) -> str:
    return "" if value is None else str(Severity(int(value)))


def make_env(loader: jinja2.BaseLoader, *, html: bool) -> LimitedSandbox:
    env = LimitedSandbox(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals["range"] = _limited_range
    env.globals.pop("lipsum", None)  # lorem ipsum has no place in a mail; n=10**6 takes minutes
    env.filters.update(
        duration=units.format_duration,
        size=units.format_size,
        when=_when,
        clock=_clock,
        severity=_severity,
    )
    return env


def template_problems(templates_dir: str) -> list[str]:
    """Syntax errors in the override templates, each as `file:line: message`."""
    path = Path(templates_dir)
    if not path.is_dir():
        return [f"{templates_dir} is not a directory"]
    problems = []
    for name in sorted(os.listdir(path)):
        if not name.endswith(".j2"):
            continue
        if name not in TEMPLATES:
            problems.append(
                f"{path / name}: not a template notifier uses (known: {', '.join(TEMPLATES)})"
            )
            continue
        env = make_env(jinja2.FileSystemLoader(str(path)), html=name.endswith(".html.j2"))
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"{path / name}:{exc.lineno}: {exc.message}")
        except OSError as exc:
            problems.append(f"{path / name}: cannot read: {exc.strerror}")
    return problems


def item_context(item: Item) -> dict[str, Any]:
    ctx = item.to_dict()
    ctx["severity"] = str(Severity(item.severity))
    ctx["previous_severity"] = _severity(item.previous_severity)
    ctx["duration"] = (item.resolved_at or item.last) - item.since if item.since else 0.0
    return ctx


def mail_context(mail: Mail, host: str) -> dict[str, Any]:
    items = [item_context(i) for i in mail.items]
    counts = {s: 0 for s in ("critical", "warning", "info")}
    for i in items:
        counts[i["severity"] if i["kind"] != "resolved" else "info"] += 1
    by_kind: dict[str, int] = {}
    for i in items:
        by_kind[i["kind"]] = by_kind.get(i["kind"], 0) + 1
    return {
        "host": host,
        "kind": mail.kind,
        "items": items[:MAX_ITEMS_LISTED],
        "more_items": items[MAX_ITEMS_LISTED:],
        "item_count": len(items),
        "total_events": mail.total_events,
        "counts": counts,
        "by_kind": by_kind,
        "created": mail.created,
        "held_since": mail.held_since,
        "worst": max(
            (i["severity"] for i in items if i["kind"] != "resolved"),
            key=lambda s: Severity.parse(s),
            default="info",
        ),
    }


def render_bounded(env: LimitedSandbox, name: str, ctx: dict[str, Any]) -> str:
    """Render a template in this process within the loop and output budgets."""
    token = _budget.set([MAX_ITERATIONS])
    try:
        out: list[str] = []
        size = 0
        for chunk in env.get_template(name).generate(ctx):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateBudgetExceeded(f"template output longer than {MAX_OUTPUT} characters")
            out.append(chunk)
        return "".join(out)
    finally:
        _budget.reset(token)


class Renderer:
    """Renders a Mail to (subject, text, html) with user overrides and built-in fallback."""

    def __init__(self, templates_dir: str | None, host: str) -> None:
        self.host = host
        self.errors: list[str] = []
        self.strict = False  # `notifier check`: a failing user template is an error, not a fallback
        builtin = jinja2.FileSystemLoader(str(builtin_dir()))
        self._builtin = {h: make_env(builtin, html=h) for h in (False, True)}
        self._user: dict[bool, LimitedSandbox] = {}
        if templates_dir:
            user = jinja2.FileSystemLoader(templates_dir)
            self._user = {h: make_env(user, html=h) for h in (False, True)}
            self._user_names = {n for n in TEMPLATES if (Path(templates_dir) / n).is_file()}
        else:
            self._user_names = set()

    def _one(self, name: str, ctx: dict[str, Any]) -> str:
        html = name.endswith(".html.j2")
        if name in self._user_names:
            try:
                return _run_isolated(self._user[html], name, ctx)
            except Exception as exc:  # any failure of a user template: fall back, say why
                failed = TemplateFailed(name, exc)
                if self.strict:
                    raise failed from exc
                message = f"template {failed}; used the built-in one"
                log.error("%s", message)
                self.errors = (self.errors + [message])[-10:]
        return render_bounded(self._builtin[html], name, ctx)

    def render(self, mail: Mail) -> tuple[str, str, str]:
        ctx = mail_context(mail, self.host)
        kind = "digest" if mail.kind == "digest" else "alert"
        subject = " ".join(self._one("subject.txt.j2", ctx).split())
        return subject, self._one(f"{kind}.txt.j2", ctx), self._one(f"{kind}.html.j2", ctx)

    def problems(self, mail: Mail) -> list[TemplateFailed]:
        """Every user template that fails for `mail`, each on its own (for `notifier check`)."""
        ctx = mail_context(mail, self.host)
        kind = "digest" if mail.kind == "digest" else "alert"
        failed = []
        for name in ("subject.txt.j2", f"{kind}.txt.j2", f"{kind}.html.j2"):
            if name in self._user_names:
                try:
                    _run_isolated(self._user[name.endswith(".html.j2")], name, ctx)
                except Exception as exc:
                    failed.append(TemplateFailed(name, exc))
        return failed
