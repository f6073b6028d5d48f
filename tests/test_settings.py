"""Settings: every value in its range, a bad one refused with a message naming it and the
previous settings kept (unit level and through the real server with the packaged default
model, 512 positions), and the time budget counted for every trigger kind."""

from __future__ import annotations

import pytest
from lsprotocol import types as T

from codeparrot_ls.settings import MAX_CANDIDATES, MIN_PROMPT_TOKENS, CompletionSettings
from codeparrot_ls.status import DEFAULT_MODEL_DIR
from test_server import serve


def test_camel_case_options_apply_and_unknown_keys_are_ignored():
    s = CompletionSettings().updated({"maxNewTokens": 16, "singleLine": True, "topP": 0.9, "whatever": 1})
    assert (s.max_new_tokens, s.single_line, s.top_p) == (16, True, 0.9)


def test_original_is_unchanged():
    base = CompletionSettings()
    base.updated({"enabled": False})
    assert base.enabled


@pytest.mark.parametrize("options", [{"maxNewTokens": "many"}, {"maxNewTokens": 0}, {"enabled": 1},
                                     {"stop": "\n"}, {"topP": 0}, {"suffixShare": 2}, {"lookupTokens": -1},
                                     {"lookupTokens": 17}, {"lookupTokens": 2.5}])
def test_bad_values_raise_with_the_key(options):
    with pytest.raises(ValueError):
        CompletionSettings().updated(options)


def test_fim_is_on_off_or_the_models_choice():
    assert CompletionSettings().fim is None
    assert CompletionSettings().updated({"fim": False}).fim is False
    assert CompletionSettings(fim=True).updated({"fim": None}).fim is None
    with pytest.raises(ValueError, match="fim"):
        CompletionSettings().updated({"fim": "yes"})


def test_lookup_tokens_default_to_the_engines_and_can_be_turned_off():
    from codeparrot_ls.engine import GenerationRequest

    assert CompletionSettings().lookup_tokens == GenerationRequest([1]).lookup_tokens > 0
    assert CompletionSettings().updated({"lookupTokens": 0}).lookup_tokens == 0


# The cases and their neighbours: (options, words the refusal must hold).
REFUSED = [
    ({"numCandidates": 1000}, "numCandidates"),
    ({"numCandidates": 0}, "numCandidates"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"topP": float("nan")}, "topP"),
    ({"suffixShare": float("nan")}, "suffixShare"),
    ({"contextTokens": 1e300}, "contextTokens"),
    ({"contextTokens": float("inf")}, "contextTokens"),
    ({"maxNewTokens": 10**12}, "maxNewTokens"),
    ({"otherFilesTokens": -100}, "otherFilesTokens"),
    ({"timeBudgetMs": -5}, "timeBudgetMs"),
    ({"timeBudgetMs": 0}, "timeBudgetMs"),
    ({"minChars": -1}, "minChars"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["x" * 10_000]}, "stop"),
    ({"stop": ["a"] * 1000}, "stop"),
    ({"stop": "\n"}, "stop"),
    ({"lookupTokens": 1e9}, "lookupTokens"),
    ({"maxNewTokens": 2.5}, "maxNewTokens"),
    ({"enabled": "yes"}, "enabled"),
]


@pytest.mark.parametrize("options,key", REFUSED)
def test_out_of_range_values_are_refused_naming_the_setting(options, key):
    before = CompletionSettings(num_candidates=4)
    with pytest.raises(ValueError, match=key):
        before.updated(options)
    assert before == CompletionSettings(num_candidates=4)


def test_values_in_range_are_accepted_and_whole_floats_are_counts():
    s = CompletionSettings().updated({"numCandidates": MAX_CANDIDATES, "contextTokens": 2048.0, "temperature": 0,
                                      "otherFilesTokens": 0, "stop": ["\n\n"], "timeBudgetMs": 250})
    assert (s.num_candidates, s.context_tokens, s.temperature, s.other_files_tokens, s.stop, s.time_budget_ms) == \
        (MAX_CANDIDATES, 2048, 0.0, 0, ["\n\n"], 250)
    assert isinstance(s.context_tokens, int)


def test_max_new_tokens_must_leave_the_model_room_for_a_prompt():
    with pytest.raises(ValueError, match=f"at most {512 - MIN_PROMPT_TOKENS}"):
        CompletionSettings().updated({"maxNewTokens": 600}, n_positions=512)
    assert CompletionSettings().updated({"maxNewTokens": 600}).max_new_tokens == 600   # no model known yet
    assert CompletionSettings().updated({"maxNewTokens": 480}, n_positions=512).max_new_tokens == 480


@pytest.mark.parametrize("invoked,options", [(False, {}), (True, {"numCandidates": MAX_CANDIDATES, "temperature": 1.0})])
def test_the_time_budget_counts_from_the_request_for_every_trigger_kind(onnx_int8, invoked, options, monkeypatch):
    """A budget spent before decoding starts leaves no token to decode, automatic or invoked."""
    import time
    import types

    from codeparrot_ls.completion import Completer
    from codeparrot_ls.engine import decoding

    # The fault: building the prompt took longer than the budget (as on a busy machine). The
    # decoder's clock runs a minute ahead of the one the request's deadline was set by.
    late = types.SimpleNamespace(monotonic=lambda: time.monotonic() + 60.0, perf_counter=time.perf_counter)
    monkeypatch.setattr(decoding, "time", late)
    completer = Completer(onnx_int8)
    settings = CompletionSettings(time_budget_ms=1000, max_new_tokens=200).updated(options)
    text = "def area(width, height):\n" * 400 + "    return "
    assert completer.complete("file:///t.py", text, len(text), settings, invoked) == []
    assert completer.stats.model_runs == 1 and completer.stats.last_generated_tokens == 0


def test_a_model_too_small_for_max_new_tokens_still_gets_a_prompt(onnx_int8):
    """Settings given before the model was known: the prompt keeps its minimum, no error."""
    from codeparrot_ls.completion import Completer

    completer = Completer(onnx_int8)       # 256 positions
    settings = CompletionSettings(max_new_tokens=600, time_budget_ms=60_000, min_chars=0)
    text = "import os\n\n\ndef main():\n    path = os.path."
    completer.complete("file:///s.py", text, len(text), settings, invoked=False)
    assert completer.stats.model_runs == 1 and 0 < completer.stats.last_prompt_tokens <= MIN_PROMPT_TOKENS


@pytest.mark.slow
async def test_the_server_refuses_bad_settings_keeps_the_old_ones_and_still_answers():
    source = "import os\n\n\ndef main():\n    path = os.path.join("
    async with serve("--model", str(DEFAULT_MODEL_DIR), init={"maxNewTokens": 600, "numCandidates": 4}) as s:
        # At initialize the model is already loaded (--model): 600 of its 512 positions is refused.
        assert any("maxNewTokens" in m.message and "512" in m.message for m in s.client.messages)
        assert (await s.stats())["settings"] == vars(CompletionSettings()), "all of a refused update is refused"
        s.configure({"codeparrot": {"numCandidates": 4, "maxNewTokens": 480}})
        good = (await s.stats())["settings"]
        assert good["num_candidates"] == 4 and good["max_new_tokens"] == 480
        cases = [({"maxNewTokens": 600}, "maxNewTokens"), *REFUSED]
        for options, key in cases:
            shown = len(s.client.messages)
            s.configure({"codeparrot": options})
            assert (await s.stats())["settings"] == good, options
            new = s.client.messages[shown:]
            assert new and key in new[-1].message and "keeping the previous settings" in new[-1].message, new
            assert new[-1].type == T.MessageType.Warning
        s.open("file:///s.py", source)
        items = await s.inline("file:///s.py", T.Position(4, len(source.split("\n")[-1])), invoked=True)
        assert isinstance(items, list)
        assert (await s.stats())["scheduler"]["errors"] == 0
