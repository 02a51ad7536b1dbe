"""Tool calling the way `make run` shows it with no key: `audiochat serve` on the offline voice, and
`audiochat say --tool NAME=RESULT` calling the tool, answering it, and hearing the continuation."""

from __future__ import annotations

from pathlib import Path

from tests.processes import audiochat_serve
from tests.test_cli import run_client, speech_of, target_of


def test_say_with_a_tool_round_trip_on_the_offline_voice(tmp_path: Path) -> None:
    out = tmp_path / "weather.wav"
    with audiochat_serve() as serve:
        target = target_of(serve)
        serve.wait_for("audiochat ready")
        said = run_client(
            "say",
            "What does get_weather say?",
            "--tool",
            'get_weather={"temp_c": 21, "sky": "clear"}',
            "--tool",
            "get_time=noon",
            "-o",
            str(out),
            "--target",
            target,
        )
        assert said.returncode == 0, said.stderr
        assert said.stdout.splitlines() == [
            "Let me call get_weather.",
            'get_weather returned: {"temp_c": 21, "sky": "clear"}.',
        ]
        assert '[get_weather({}) -> {"temp_c": 21, "sky": "clear"}]' in said.stderr
        # The preamble and the continuation both went into the one WAV.
        assert len(speech_of(out)) > 24_000 * 2
        assert serve.wait_for("turn tool_calls")["transport"] == "grpc"
        assert serve.wait_for("turn stop")["transport"] == "grpc"


def test_a_malformed_tool_flag_is_one_line() -> None:
    said = run_client("say", "hi", "--tool", "no-equals-sign", "--target", "127.0.0.1:9")
    assert said.returncode == 1
    assert said.stderr.startswith("audiochat: --tool 'no-equals-sign': write NAME=RESULT")
