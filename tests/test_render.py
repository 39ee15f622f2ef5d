"""Tests for relay.render: template lookup, escaping, filters, errors and limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relay.errors import TemplateError
from relay.events import SAMPLE_EVENT, Event, event_from_dict
from relay.render import MAX_OUTPUT_BYTES, Renderer, escape_slack
from relay.render_filters import datasource_name, make_datetime_filter
from relay.sinks.base import Part

PARTS: dict[str, tuple[Part, ...]] = {
    "slack": (
        Part("text", required=True, escape="slack"),
        Part("blocks", required=False, escape="slack_json", json=True),
    ),
    "email": (
        Part("subject", required=True, escape="header"),
        Part("text", required=True, escape="none"),
        Part("html", required=False, escape="html"),
    ),
    "webhook": (Part("body", required=True, escape="json", json=True),),
    "console": (Part("text", required=True, escape="none"),),
}
NASTY_EMAIL = "<!channel> & <https://x.example|y>"
RECEIVED_AT = 1_733_240_100.0


def make_event(**fields: Any) -> Event:
    return event_from_dict({**SAMPLE_EVENT, **fields}, received_at=RECEIVED_AT)


def render(
    renderer: Renderer, sink_type: str, event: Event, template: str | None = None
) -> dict[str, str]:
    return renderer.render(
        sink_name="test-sink",
        sink_type=sink_type,
        parts=PARTS[sink_type],
        template=template,
        event=event,
    )


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def builtin() -> Renderer:
    return Renderer(None)


def test_builtin_templates_compile(builtin: Renderer) -> None:
    """Every built-in template compiles without a problem."""
    assert builtin.compile_all() == []


@pytest.mark.parametrize("sink_type", ["slack", "email", "webhook", "console"])
def test_builtin_shared_connection_names_client_and_source(
    builtin: Renderer, sink_type: str
) -> None:
    """The built-in shared_connection templates show the email and the readable data source."""
    parts = render(builtin, sink_type, make_event())
    assert set(parts) == {p.name for p in PARTS[sink_type]}
    everything = "\n".join(parts.values())
    assert "ana.lopez@example.com" in everything
    if sink_type != "webhook":
        assert "Google Ads" in everything


def test_builtin_slack_text_reads_as_a_sentence(builtin: Renderer) -> None:
    """The Slack text says who connected which source, and when, in the configured timezone."""
    text = render(builtin, "slack", make_event())["text"]
    assert "*ana.lopez@example.com* connected *Google Ads*" in text
    assert "2024-12-03 15:33 UTC" in text


def test_builtin_slack_blocks_have_header_fields_and_context(builtin: Renderer) -> None:
    """The built-in blocks are a header, a section with Client/Data source/When, and a context."""
    blocks = json.loads(render(builtin, "slack", make_event())["blocks"])
    assert [b["type"] for b in blocks] == ["header", "section", "context"]
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields == [
        "*Client*\nana.lopez@example.com",
        "*Data source*\nGoogle Ads",
        "*When*\n2024-12-03 15:33 UTC",
    ]
    assert make_event().id in blocks[2]["elements"][0]["text"]


def test_builtin_webhook_body_is_type_timestamp_and_data(builtin: Renderer) -> None:
    """The default webhook body carries the type, an ISO 8601 timestamp and the whole event."""
    body = json.loads(render(builtin, "webhook", make_event())["body"])
    assert body == {
        "type": "shared_connection",
        "timestamp": "2024-12-03T15:33:20+00:00",
        "data": SAMPLE_EVENT,
    }


def test_webhook_timestamp_falls_back_to_received_at(builtin: Renderer) -> None:
    """Without a created time, the webhook timestamp is when the relay received the event."""
    body = json.loads(render(builtin, "webhook", make_event(created=None))["body"])
    assert body["timestamp"] == "2024-12-03T15:35:00+00:00"


@pytest.mark.parametrize("sink_type", ["slack", "email", "webhook", "console"])
@pytest.mark.parametrize("event_type", ["shared_connection", "something_else"])
def test_missing_and_null_fields_never_show_none(
    builtin: Renderer, sink_type: str, event_type: str
) -> None:
    """Missing or null fields render as sensible text, never as "None" and never as an error."""
    for data in ({"type": event_type}, {"type": event_type, "email": None, "created": None}):
        event = event_from_dict({**data, "datasource": None}, received_at=RECEIVED_AT)
        parts = render(builtin, sink_type, event)
        assert all("None" not in text for text in parts.values())
        for name in ("blocks", "body"):
            if name in parts:
                json.loads(parts[name])


def test_missing_fields_read_naturally_in_slack(builtin: Renderer) -> None:
    """A shared_connection without email, source or time says someone connected an unknown one."""
    event = event_from_dict({"type": "shared_connection"}, received_at=RECEIVED_AT)
    text = render(builtin, "slack", event)["text"]
    assert text == ":link: *Someone* connected *an unknown data source* through Dataslayer."


def test_default_templates_show_type_and_fields(builtin: Renderer) -> None:
    """Event types without their own folder use default/, which shows the type and each field."""
    event = event_from_dict(
        {"type": "connection_removed", "datasource": "ga4", "reason": "expired"}, RECEIVED_AT
    )
    text = render(builtin, "console", event)["text"]
    assert "connection_removed" in text
    assert "reason: expired" in text
    blocks = json.loads(render(builtin, "slack", event)["blocks"])
    assert "*reason:* expired" in blocks[1]["text"]["text"]


def test_slack_escapes_control_characters_in_values(tmp_path: Path) -> None:
    """Slack values have & < > escaped, but literal <!here> written in the template survives."""
    write(tmp_path, "shared_connection/slack.text.j2", "<!here> {{ email }}")
    text = render(Renderer(tmp_path), "slack", make_event(email=NASTY_EMAIL))["text"]
    assert text == "<!here> &lt;!channel&gt; &amp; &lt;https://x.example|y&gt;"


def test_builtin_slack_text_cannot_be_made_to_ping(builtin: Renderer) -> None:
    """A hostile email in the built-in Slack text is escaped, so it cannot ping or link."""
    text = render(builtin, "slack", make_event(email=NASTY_EMAIL))["text"]
    assert "&lt;!channel&gt; &amp; &lt;https://x.example|y&gt;" in text
    assert "<!channel>" not in text


def test_escape_slack_leaves_quotes_alone() -> None:
    """escape_slack replaces only & < > and leaves quotes as they are."""
    assert escape_slack("a & <b> \"c\" 'd'") == "a &amp; &lt;b&gt; \"c\" 'd'"


def test_safe_filter_passes_a_value_unescaped(tmp_path: Path) -> None:
    """A value marked |safe is inserted as-is; a quoted constant expression is still escaped."""
    write(tmp_path, "shared_connection/slack.text.j2", '{{ "<!here>"|safe }} {{ "<b>" }}')
    text = render(Renderer(tmp_path), "slack", make_event())["text"]
    assert text == "<!here> &lt;b&gt;"


def test_macro_output_is_not_escaped_twice(tmp_path: Path) -> None:
    """A macro's output is escaped once, when its values are interpolated, not again."""
    template = "{% macro who(e) %}<mailto:x|{{ e }}>{% endmacro %}{{ who(email) }}"
    write(tmp_path, "shared_connection/slack.text.j2", template)
    text = render(Renderer(tmp_path), "slack", make_event(email="a&b"))["text"]
    assert text == "<mailto:x|a&amp;b>"


def test_blocks_json_stays_valid_with_awkward_values(builtin: Renderer) -> None:
    """Quotes, backslashes and newlines in values keep the Block Kit JSON valid."""
    email = 'a"b\\c\nd <!here>'
    blocks = json.loads(render(builtin, "slack", make_event(email=email))["blocks"])
    assert blocks[1]["fields"][0]["text"] == '*Client*\na"b\\c\nd &lt;!here&gt;'


def test_tojson_gives_a_whole_json_value(tmp_path: Path) -> None:
    """|tojson inserts a complete JSON value, not HTML-escaped, inside a JSON part."""
    write(tmp_path, "shared_connection/webhook.body.j2", '{"e": {{ event|tojson }}}')
    event = make_event(email="<a&b>'\"")
    body = json.loads(render(Renderer(tmp_path), "webhook", event)["body"])
    assert body["e"] == event.data


def test_json_escape_writes_strings_unquoted_and_other_values_as_json(tmp_path: Path) -> None:
    """In JSON parts strings are escaped to sit inside quotes; numbers and null are JSON values."""
    template = '{"email": "{{ email }}", "created": {{ created }}, "missing": {{ event.get("x") }}}'
    write(tmp_path, "shared_connection/webhook.body.j2", template)
    body = render(Renderer(tmp_path), "webhook", make_event(email='q"\\'))["body"]
    assert json.loads(body) == {"email": 'q"\\', "created": 1733240000, "missing": None}


def test_html_part_escapes_values(builtin: Renderer) -> None:
    """Values in the html part are HTML-escaped, so they cannot add markup."""
    html = render(builtin, "email", make_event(email="<script>x</script>&"))["html"]
    assert "&lt;script&gt;x&lt;/script&gt;&amp;" in html
    assert "<script>" not in html


def test_header_part_removes_line_breaks(tmp_path: Path) -> None:
    """Line breaks in a subject's values become spaces, so no header can be injected."""
    write(tmp_path, "shared_connection/email.subject.j2", "Hello\n{{ email }}\n")
    email = "a@b.c\r\nBcc: x@y.z\u2028\x85end"
    subject = render(Renderer(tmp_path), "email", make_event(email=email))["subject"]
    assert subject == "Hello a@b.c Bcc: x@y.z end"


def test_user_dir_overrides_builtin(tmp_path: Path) -> None:
    """A template in the user folder is used instead of the built-in one of the same name."""
    write(tmp_path, "shared_connection/console.text.j2", "custom {{ email }}")
    assert render(Renderer(tmp_path), "console", make_event()) == {
        "text": "custom ana.lopez@example.com"
    }


def test_user_default_applies_to_other_event_types(tmp_path: Path) -> None:
    """A user default/ template serves event types that have no folder of their own."""
    write(tmp_path, "default/console.text.j2", "any {{ type }}")
    event = make_event(type="brand_new")
    assert render(Renderer(tmp_path), "console", event)["text"] == "any brand_new"


def test_missing_user_dir_uses_builtins(tmp_path: Path) -> None:
    """A user folder that does not exist is ignored and the built-in templates are used."""
    renderer = Renderer(tmp_path / "nope")
    assert "Google Ads" in render(renderer, "console", make_event())["text"]


def test_sink_template_selects_a_folder(tmp_path: Path) -> None:
    """A sink's template key picks templates/NAME/ instead of the event type's folder."""
    write(tmp_path, "terse/console.text.j2", "{{ sink }}: {{ datasource_name }}")
    parts = render(Renderer(tmp_path), "console", make_event(), template="terse")
    assert parts == {"text": "test-sink: Google Ads"}


def test_missing_required_part_names_the_templates_tried(tmp_path: Path) -> None:
    """A required part with no template is an error naming each template name tried."""
    renderer = Renderer(tmp_path)
    with pytest.raises(TemplateError) as info:
        renderer.render(
            sink_name="s",
            sink_type="pager",
            parts=(Part("text", required=True, escape="none"),),
            template=None,
            event=make_event(),
        )
    assert "shared_connection/pager.text.j2" in str(info.value)
    assert "default/pager.text.j2" in str(info.value)


def test_missing_optional_part_is_left_out(tmp_path: Path) -> None:
    """An optional part without a template is omitted from the result."""
    write(tmp_path, "default/pager.text.j2", "hi")
    parts = (Part("text", required=True, escape="none"), Part("extra", False, escape="none"))
    rendered = Renderer(tmp_path).render(
        sink_name="s", sink_type="pager", parts=parts, template=None, event=make_event()
    )
    assert rendered == {"text": "hi"}


def test_optional_part_rendering_nothing_is_left_out(tmp_path: Path) -> None:
    """An optional part whose template renders only whitespace is omitted, so users can drop it."""
    write(tmp_path, "shared_connection/slack.text.j2", "hi")
    write(tmp_path, "shared_connection/slack.blocks.j2", "{# text only #}\n  \n")
    assert render(Renderer(tmp_path), "slack", make_event()) == {"text": "hi"}


def test_undefined_name_names_template_and_line(tmp_path: Path) -> None:
    """Using an undefined name is a TemplateError naming the template and the line."""
    write(tmp_path, "shared_connection/console.text.j2", "one\ntwo\n{{ foo }}\n")
    with pytest.raises(TemplateError) as info:
        render(Renderer(tmp_path), "console", make_event())
    assert (info.value.template, info.value.line) == ("shared_connection/console.text.j2", 3)
    assert str(info.value) == "shared_connection/console.text.j2, line 3: 'foo' is undefined"


def test_error_in_included_template_names_that_template(tmp_path: Path) -> None:
    """An error inside an included template names the included template and its line."""
    write(tmp_path, "shared_connection/console.text.j2", '{% include "parts/who.j2" %}')
    write(tmp_path, "parts/who.j2", "ok\n{{ 1 // 0 }}")
    with pytest.raises(TemplateError) as info:
        render(Renderer(tmp_path), "console", make_event())
    assert (info.value.template, info.value.line) == ("parts/who.j2", 2)
    assert "ZeroDivisionError" in str(info.value)


def test_missing_include_names_the_including_line(tmp_path: Path) -> None:
    """Including a template that does not exist is an error at the line that includes it."""
    write(tmp_path, "shared_connection/console.text.j2", 'a\n{% include "nope.j2" %}')
    with pytest.raises(TemplateError) as info:
        render(Renderer(tmp_path), "console", make_event())
    assert (info.value.template, info.value.line) == ("shared_connection/console.text.j2", 2)
    assert "'nope.j2' not found" in str(info.value)


def test_runtime_error_messages_mask_emails(tmp_path: Path) -> None:
    """A runtime error message does not carry the event's email address."""
    write(tmp_path, "shared_connection/console.text.j2", "{{ event[email] }}")
    with pytest.raises(TemplateError) as info:
        render(Renderer(tmp_path), "console", make_event())
    assert "a***@example.com" in str(info.value)
    assert "ana.lopez@example.com" not in str(info.value)


def test_syntax_error_is_reported_by_compile_all(tmp_path: Path) -> None:
    """compile_all reports a syntax error with the template's name and line."""
    write(tmp_path, "shared_connection/console.text.j2", "fine\n{% if x %}\nno end\n")
    write(tmp_path, "broken/slack.text.j2", "a\n{{ x ! }}")
    problems = sorted(Renderer(tmp_path).compile_all(), key=lambda p: str(p.template))
    assert [(p.template, p.line) for p in problems] == [
        ("broken/slack.text.j2", 2),
        ("shared_connection/console.text.j2", 3),
    ]


def test_syntax_error_at_render_is_a_template_error(tmp_path: Path) -> None:
    """Rendering a template with a syntax error raises a TemplateError with name and line."""
    write(tmp_path, "shared_connection/console.text.j2", "a\n{{ x ! }}")
    with pytest.raises(TemplateError) as info:
        render(Renderer(tmp_path), "console", make_event())
    assert (info.value.template, info.value.line) == ("shared_connection/console.text.j2", 2)


def test_invalid_json_part_is_a_template_error(tmp_path: Path) -> None:
    """A JSON part that does not render valid JSON is an error giving the output line."""
    write(tmp_path, "shared_connection/webhook.body.j2", '{\n"a": 1,\n"b": oops\n}')
    with pytest.raises(TemplateError) as info:
        render(Renderer(tmp_path), "webhook", make_event())
    assert info.value.template == "shared_connection/webhook.body.j2"
    assert info.value.line == 3
    assert "did not render valid JSON" in str(info.value)


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__",
        "email.__class__.__base__.__subclasses__()",
        "event.update({'x': 1})",
        "lipsum.__globals__",
    ],
)
def test_sandbox_blocks_unsafe_access(tmp_path: Path, expression: str) -> None:
    """The sandbox refuses access to internals and changes to the event."""
    write(tmp_path, "shared_connection/console.text.j2", f"{{{{ {expression} }}}}")
    with pytest.raises(TemplateError) as info:
        render(Renderer(tmp_path), "console", make_event())
    assert info.value.template == "shared_connection/console.text.j2"
    assert info.value.line == 1


def test_datetime_filter_uses_configured_timezone(tmp_path: Path) -> None:
    """The datetime filter formats UNIX seconds in the configured timezone by default."""
    write(tmp_path, "shared_connection/console.text.j2", "{{ created|datetime }}")
    renderer = Renderer(tmp_path, timezone="Europe/Madrid")
    assert render(renderer, "console", make_event())["text"] == "2024-12-03 16:33 CET"


def test_datetime_filter_format_and_timezone_arguments() -> None:
    """The datetime filter takes a format, a timezone and "iso"; bad input is shown as-is."""
    fmt = make_datetime_filter(ZoneInfo("Europe/Madrid"))
    assert fmt(1733240000, "%d/%m/%Y %H:%M") == "03/12/2024 16:33"
    assert fmt("1733240000", tz="America/New_York") == "2024-12-03 10:33 EST"
    assert fmt(1751328000.0, "%H:%M %Z") == "02:00 CEST"
    assert fmt(1733240000, "iso") == "2024-12-03T16:33:20+01:00"
    assert fmt(None) == ""
    assert fmt("") == ""
    assert fmt("yesterday") == "yesterday"
    assert fmt(10**20) == str(10**20)


def test_invalid_timezone_is_a_value_error() -> None:
    """An unknown timezone makes the constructor raise ValueError naming it."""
    with pytest.raises(ValueError, match="Mars/Olympus"):
        Renderer(None, timezone="Mars/Olympus")


def test_datasource_name_is_readable() -> None:
    """Known data sources get their product name; others are title-cased; None is empty."""
    assert datasource_name("ga4") == "Google Analytics 4"
    assert datasource_name("Bing_Ads") == "Microsoft Advertising"
    assert datasource_name("some_new_source") == "Some New Source"
    assert datasource_name(None) == ""


def test_output_over_the_size_cap_is_an_error(tmp_path: Path) -> None:
    """A part that renders more than 256 KiB is refused with its size."""
    template = "{% for i in range(300) %}{{ 'x' * 1000 }}{% endfor %}"
    write(tmp_path, "shared_connection/console.text.j2", template)
    with pytest.raises(TemplateError, match=f"over the {MAX_OUTPUT_BYTES}-byte limit"):
        render(Renderer(tmp_path), "console", make_event())


def test_check_sink_reports_problems_per_event_type(tmp_path: Path) -> None:
    """check_sink renders a sample of each event type and returns each distinct problem once."""
    write(tmp_path, "shared_connection/console.text.j2", "{{ nope }}")
    renderer = Renderer(tmp_path)
    problems = renderer.check_sink(
        sink_name="stdout",
        sink_type="console",
        parts=PARTS["console"],
        template=None,
        event_types=["shared_connection", "other", "shared_connection"],
    )
    assert [str(p) for p in problems] == [
        "shared_connection/console.text.j2, line 1: 'nope' is undefined"
    ]
    assert (
        Renderer(None).check_sink(
            sink_name="s", sink_type="slack", parts=PARTS["slack"], template=None, event_types=[]
        )
        == []
    )


def test_compile_all_for_some_kinds_still_finds_every_syntax_error(tmp_path):
    """Warming only the escape kinds in use still reports a broken template of another sink."""
    folder = tmp_path / "shared_connection"
    folder.mkdir()
    (folder / "email.html.j2").write_text("<p>{{ email </p>\n")
    problems = Renderer(tmp_path).compile_all(["terminal"])
    assert [p.template for p in problems] == ["shared_connection/email.html.j2"]
    assert problems[0].line == 1


def test_a_template_added_after_start_is_not_used_until_a_reload(tmp_path: Path) -> None:
    """Only the templates there when the renderer was made (and checked) are used: one added
    later, unchecked, is passed over until a reload makes a new renderer."""
    renderer = Renderer(tmp_path)
    write(tmp_path, "shared_connection/console.text.j2", "{{ nobody }}")
    text = render(renderer, "console", make_event())["text"]
    assert "Google Ads" in text  # the built-in template, not the new broken one
    with pytest.raises(TemplateError, match="nobody"):
        render(Renderer(tmp_path), "console", make_event())
