"""The one rule for text that isn't valid Unicode (``eft_local.errors``), used at every edge."""

from __future__ import annotations

import json

import pytest

from eft_local.errors import UserError, bad_text_in, check_text, unicode_problem


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ab\ud800", "a lone surrogate U+D800, at character 3"),  # JSON's "\ud800"
        ("\udfff", "a lone surrogate U+DFFF, at character 1"),
        (b"bad\xff".decode("utf-8", "surrogateescape"), "the byte 0xff, which is not UTF-8, at character 4"),  # argv, file names
    ],
)
def test_text_that_is_not_unicode_is_named(text, reason):
    assert unicode_problem(text) == reason
    with pytest.raises(UserError, match=r"^--model-name is not valid Unicode: ") as e:
        check_text(text, "--model-name")
    assert reason in str(e.value)


@pytest.mark.parametrize(
    "text", ["", "plain", "é中😀", "\U0010ffff", "\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16")]
)
def test_valid_text_passes(text):
    assert unicode_problem(text) is None and check_text(text, "x") == text


def test_the_first_bad_string_anywhere_in_a_json_value_with_its_path():
    body = json.loads('{"model": "m", "messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "x\\ud801"}]}')
    assert bad_text_in(body) == ("messages[1].content", "a lone surrogate U+D801, at character 2")
    assert bad_text_in({"weights": {"a\udcff": 1}}) == ("weights.a\\udcff", "the byte 0xff, which is not UTF-8, at character 2")
    assert bad_text_in({"a": [["\ud800"]]}) == ("a[0][0]", "a lone surrogate U+D800, at character 1")
    assert bad_text_in({"a": [1, 2.5, None, True, {"b": "fine"}]}) is None
    deep = json.loads("[" * 900 + '"\\udc00"' + "]" * 900)
    assert bad_text_in(deep)[0] == "[0]" * 900  # as deep as json.loads goes: no RecursionError


@pytest.mark.parametrize(("name", "value"), [("system_prompt", "\udcff"), ("stop", ["ok", "\ud800"]), ("top_p_mode", "e\udcff")])
def test_every_text_setting_refuses_text_that_is_not_unicode(name, value):
    from eft_local.settings import SETTINGS

    with pytest.raises(UserError, match="is not valid Unicode"):
        SETTINGS[name].check(value)
