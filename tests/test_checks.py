"""What `relay check` (and so serve and a reload) finds before any event arrives."""

from __future__ import annotations

import pytest

from relay.checks import (
    UNTEMPLATED_TYPE,
    event_types,
    load_checked,
    template_problems,
    template_warnings,
)
from relay.cli import main
from relay.config import load_config
from relay.errors import ConfigError
from tests.helpers import write_config

CONSOLE = '[sinks.out]\ntype = "console"\n[[routes]]\nsinks = ["out"]\n'


def user_template(tmp_path, name, text):
    path = tmp_path / "templates" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_broken_default_template_is_found_before_an_event_needs_it(tmp_path, capsys):
    """A user's default/ template is rendered by check (for a type without a folder of its own),
    so an undefined name in it fails check instead of killing deliveries later."""
    user_template(tmp_path, "default/console.text.j2", "Hello {{ nosuchvar }}\n")
    config = write_config(tmp_path, CONSOLE)
    assert main(["check", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "sinks.out: default/console.text.j2, line 1: 'nosuchvar' is undefined" in out


def test_templates_of_every_folder_are_rendered(tmp_path):
    """A folder named after an event type no route names is still rendered by check."""
    user_template(tmp_path, "signup/console.text.j2", "{{ nobody }}")
    config = load_config(write_config(tmp_path, CONSOLE), environ={})
    assert "signup" in event_types(config)
    (problem,) = template_problems(config)
    assert "signup/console.text.j2, line 1" in problem


def test_the_fall_through_type_never_names_a_folder(tmp_path):
    """Even with a folder named like the fall-through type, one checked type has no folder."""
    user_template(tmp_path, f"{UNTEMPLATED_TYPE}/console.text.j2", "{{ email }}")
    config = load_config(write_config(tmp_path, CONSOLE), environ={})
    types = event_types(config)
    assert UNTEMPLATED_TYPE in types
    assert UNTEMPLATED_TYPE + "_" in types


def test_a_default_template_shadowed_by_a_built_in_one_is_a_warning(tmp_path, capsys):
    """default/console.text.j2 of the user does not apply to shared_connection events, since the
    built-in shared_connection/console.text.j2 comes first: check says so and still passes."""
    user_template(tmp_path, "default/console.text.j2", "Hello {{ email }}\n")
    config = write_config(tmp_path, CONSOLE)
    assert main(["check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        "warning: templates: default/console.text.j2 is not used for shared_connection events"
    ) in out


def test_no_shadow_warning_when_the_type_folder_is_the_users_too(tmp_path):
    """A user who also has shared_connection/console.text.j2 gets no warning."""
    user_template(tmp_path, "default/console.text.j2", "{{ email }}")
    user_template(tmp_path, "shared_connection/console.text.j2", "{{ email }}")
    config = load_config(write_config(tmp_path, CONSOLE), environ={})
    assert template_warnings(config) == []


@pytest.mark.parametrize("content", [b"not a database\n", b"\x00" * 200])
def test_check_refuses_a_database_path_that_is_not_sqlite(tmp_path, capsys, content):
    """A storage.path that holds something other than SQLite is a problem check names."""
    (tmp_path / "relay.db").write_bytes(content)
    config = write_config(tmp_path, CONSOLE)
    assert main(["check", "-c", str(config)]) == 1
    assert "storage.path: " in capsys.readouterr().out


def test_an_empty_database_file_is_fine(tmp_path, capsys):
    """An empty file at storage.path becomes the database: no problem."""
    (tmp_path / "relay.db").write_bytes(b"")
    config = write_config(tmp_path, CONSOLE)
    assert main(["check", "-c", str(config)]) == 0


def test_outbox_commands_on_a_file_that_is_not_a_database_say_so(tmp_path, capsys):
    """relay outbox on a non-database file is one clear line and exit 1, not a traceback."""
    (tmp_path / "relay.db").write_text("not a database\n")
    config = write_config(tmp_path, CONSOLE)
    assert main(["outbox", "list", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "cannot open the database" in err
    assert "file is not a database" in err


SLACK = (
    '[sinks.team]\ntype = "slack"\nwebhook_url = "https://hooks.slack.com/services/T/B/x"\n'
    '[[routes]]\nsinks = ["team"]\n'
)


@pytest.mark.parametrize(
    ("blocks", "problem"),
    [
        ('{"type": "section"}', "the blocks part is a JSON dict, not a list"),
        ('"just a string"', "the blocks part is a JSON str, not a list"),
    ],
)
def test_slack_blocks_that_are_not_a_list_fail_check(tmp_path, capsys, blocks, problem):
    """Blocks that render to JSON other than an array are what Slack refuses: check says so,
    naming the template, instead of passing and killing every delivery later."""
    user_template(tmp_path, "shared_connection/slack.blocks.j2", blocks)
    config = write_config(tmp_path, SLACK)
    assert main(["check", "-c", str(config)]) == 1
    assert f"sinks.team: shared_connection/slack.blocks.j2: {problem}" in capsys.readouterr().out


def test_slack_text_that_renders_empty_without_blocks_fails_check(tmp_path, capsys):
    """An empty text with no blocks would be refused by Slack (no_text): a check problem."""
    user_template(tmp_path, "shared_connection/slack.text.j2", "{% if false %}x{% endif %}")
    user_template(tmp_path, "shared_connection/slack.blocks.j2", "{# text only #}")
    config = write_config(tmp_path, SLACK)
    assert main(["check", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "sinks.team: shared_connection/slack.text.j2: the text part is empty" in out


def test_empty_text_is_fine_when_blocks_carry_the_message(tmp_path, capsys):
    """Slack takes a blank text when there are blocks: no problem."""
    user_template(tmp_path, "shared_connection/slack.text.j2", " ")
    config = write_config(tmp_path, SLACK)
    assert main(["check", "-c", str(config)]) == 0


def test_a_config_problem_does_not_hide_a_broken_template(tmp_path, capsys):
    """A misspelt key and a template syntax error are listed together, by check and by what
    serve and a reload run, not the template only once the config is fixed."""
    user_template(tmp_path, "shared_connection/console.text.j2", "{% if %}\n")
    config = write_config(tmp_path, "[delivery]\nmax_atempts = 3\n" + CONSOLE)
    assert main(["check", "-c", str(config)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'delivery.max_atempts: unknown key (did you mean "max_attempts"?)'
    assert out[1].startswith("shared_connection/console.text.j2, line 1: ")
    with pytest.raises(ConfigError) as caught:
        load_checked(config)
    assert caught.value.problems[0].path == "delivery.max_atempts"
    assert "console.text.j2, line 1" in str(caught.value.problems[1])


def test_a_template_that_is_not_utf8_is_one_line_not_a_traceback(tmp_path, capsys):
    """A template saved in another encoding is a problem naming it, in check and in preview."""
    path = tmp_path / "templates" / "shared_connection" / "console.text.j2"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe Gr\xfc\xdfe")
    config = write_config(tmp_path, CONSOLE)
    assert main(["check", "-c", str(config)]) == 1
    expected = "shared_connection/console.text.j2: is not UTF-8 text (byte 0xff at offset 0)"
    assert expected in capsys.readouterr().out
    assert main(["preview", "-c", str(config)]) == 1
    assert f"template error: {expected}" in capsys.readouterr().out
