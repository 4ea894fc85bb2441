"""Text from outside (a ComfyUI server's answer, a file name) may hold terminal control sequences: ESC [2J clears the
screen, ESC ]0;...BEL retitles the window, a CR hides what came before on the line. Every line the commands write to
the terminal shows them as ``\\xNN`` instead of sending them (a trust audit left "a redirect's Location printed without
removing terminal control characters")."""
from __future__ import annotations

import pytest

from echomimic_lib.errors import printable
from tests.test_batch_hunt_5 import _queue, comfy, media  # noqa: F401  (fixtures)

EVIL = "\x1b]0;owned\x07\x1b[2J\rok\x9b31m"


def _clean(text: str) -> bool:
    return not any(c in text for c in "\x1b\x07\r\x9b")


def test_printable_keeps_newlines_and_tabs_and_shows_every_other_control_character():
    assert printable("a\tb\nc") == "a\tb\nc"
    assert printable(EVIL) == "\\x1b]0;owned\\x07\\x1b[2J\\x0dok\\x9b31m"
    assert printable("Ünïcödé ✓") == "Ünïcödé ✓"
    assert printable(ValueError("x\x1by")) == "x\\x1by"


def test_a_refused_prompt_shows_the_servers_escapes_never_sends_them(comfy, media, capsys):  # noqa: F811
    url, state = comfy
    state["answers"] = [(400, {"error": {"type": "invalid_prompt", "message": f"bad {EVIL}", "details": EVIL},
                               "node_errors": {"3": {"errors": [{"message": EVIL, "details": EVIL, "extra_info": {}}],
                                                     "class_type": f"Node{EVIL}"}}})]
    assert _queue(url, media) == 2
    out, err = capsys.readouterr()
    assert "bad \\x1b]0;owned\\x07" in err and "node 3 (Node\\x1b" in err, err
    assert _clean(out) and _clean(err), repr(err)


def test_a_failed_prompts_message_from_the_server_is_shown_escaped(comfy, media, capsys, monkeypatch):  # noqa: F811
    from tests._http_stub import JsonHandler

    url, state = comfy
    state["how"] = {"p1": "error", "p2": "error"}  # (the stand-in's error text made hostile through its reply)

    original = JsonHandler._reply

    def reply(self, code, body):
        text = repr(body)
        if "exception_message" in text:
            for item in body.values():
                for kind, msg in item["status"]["messages"]:
                    if kind == "execution_error":
                        msg["exception_message"] = f"boom {EVIL}"
        return original(self, code, body)

    monkeypatch.setattr(JsonHandler, "_reply", reply)
    assert _queue(url, media, "--wait", "--timeout", "5") == 1
    out, err = capsys.readouterr()
    assert "boom \\x1b]0;owned" in out + err, out + err
    assert _clean(out) and _clean(err), repr(out + err)


@pytest.mark.parametrize("how", ["error", "log"])
def test_a_file_name_with_an_escape_is_shown_escaped_by_the_command_line(tmp_path, capsys, how):
    from echomimic_lib.cli import main as cli

    name = tmp_path / f"face{EVIL}.wav"
    if how == "error":  # an error naming the file
        rc = cli(["animate", "--reference", str(tmp_path / "a.png"), "--audio", str(name), "-o", str(tmp_path / "o.mp4"),
                  "--smoke"])
        assert rc == 2
    else:  # a log line naming it: the logging formatter of every command
        import logging

        from echomimic_lib.cli.common import setup_logging

        setup_logging()
        logging.getLogger("echomimic_lib.test").warning("read %s", name)
    err = capsys.readouterr().err
    assert "face\\x1b]0;owned" in err, err
    assert _clean(err), repr(err)
