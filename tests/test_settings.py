import pytest

from codeparrot_ls.settings import CompletionSettings


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
