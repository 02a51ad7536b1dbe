"""Upstream selection: AUDIOCHAT_UPSTREAM's kinds and the model-name mapping (pure, no servers)."""

from __future__ import annotations

import pytest

from service.settings import from_environment
from service.upstream_routing import CHAT_COMPLETIONS, REALTIME, ModelRoutes, prefixes


def test_the_realtime_kind_needs_a_key_and_defaults_to_a_realtime_model() -> None:
    with pytest.raises(ValueError, match=r"openai-realtime .*OPENAI_API_KEY"):
        from_environment({"AUDIOCHAT_UPSTREAM": "openai-realtime"})
    settings = from_environment({"AUDIOCHAT_UPSTREAM": "openai-realtime", "OPENAI_API_KEY": "sk-x"})
    assert settings.defaults.model == "gpt-realtime"
    assert from_environment({"OPENAI_API_KEY": "sk-x"}).defaults.model == "gpt-4o-audio-preview"
    chosen = {"AUDIOCHAT_UPSTREAM": "openai-realtime", "OPENAI_API_KEY": "sk-x", "AUDIOCHAT_MODEL": "mine"}
    assert from_environment(chosen).defaults.model == "mine"


def test_an_unknown_kind_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"openai, openai-realtime, offline.*not 'realtime'"):
        from_environment({"AUDIOCHAT_UPSTREAM": "realtime"})


@pytest.mark.parametrize(
    ("default", "model", "api"),
    [
        (CHAT_COMPLETIONS, "gpt-realtime", REALTIME),
        (CHAT_COMPLETIONS, "gpt-4o-mini-realtime-preview", REALTIME),
        (CHAT_COMPLETIONS, "gpt-4o-audio-preview", CHAT_COMPLETIONS),
        (CHAT_COMPLETIONS, "my-model", CHAT_COMPLETIONS),
        (REALTIME, "my-model", REALTIME),
        (REALTIME, "gpt-audio-mini", CHAT_COMPLETIONS),
        (REALTIME, "gpt-realtime-mini", REALTIME),
    ],
)
def test_the_model_mapping(default: str, model: str, api: str) -> None:
    settings = from_environment({"OPENAI_API_KEY": "sk-x"})
    routes = ModelRoutes(
        default, prefixes(settings.realtime_models), prefixes(settings.chat_completions_models)
    )
    assert routes.api_for(model) == api


def test_the_longest_prefix_wins_and_blanks_are_ignored() -> None:
    routes = ModelRoutes(CHAT_COMPLETIONS, prefixes("gpt-, ,"), prefixes("gpt-4o-audio"))
    assert routes.realtime_prefixes == ("gpt-",)
    assert routes.api_for("gpt-4o-audio-preview") == CHAT_COMPLETIONS
    assert routes.api_for("gpt-realtime") == REALTIME
