"""The command line as a user runs it: `audiochat serve` with no key, then `say` and `ask` against it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from service.audio import parse_wav
from tests.processes import AUDIOCHAT, REPO, ServeProcess, audiochat_serve, offline_environment


def run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUDIOCHAT, *args], env=offline_environment(), capture_output=True, text=True, timeout=60, cwd=REPO
    )


def target_of(serve: ServeProcess) -> str:
    return f"127.0.0.1:{serve.wait_for('gRPC service listening')['port']}"


def speech_of(path: Path) -> np.ndarray:
    data = path.read_bytes()
    info = parse_wav(data)
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (24_000, 1, 16)
    return np.frombuffer(data[info.data_offset : info.data_offset + info.data_length], dtype="<i2")


def test_say_and_ask_against_the_offline_voice(tmp_path: Path) -> None:
    with audiochat_serve() as serve:
        target = target_of(serve)
        serve.wait_for("audiochat ready")

        said = run_client("say", "hello there", "-o", str(tmp_path / "hello.wav"), "--target", target)
        assert said.returncode == 0, said.stderr
        assert "hello there" in said.stdout.lower()
        assert "time to first audio:" in said.stderr
        samples = speech_of(tmp_path / "hello.wav")
        assert len(samples) > 12_000, "longer than half a second"
        assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 300, "real speech, not silence"

        asked = run_client(
            "ask", str(tmp_path / "hello.wav"), "-o", str(tmp_path / "answer.wav"), "--target", target
        )
        assert asked.returncode == 0, asked.stderr
        seconds = len(samples) / 24_000
        assert f"{seconds:.1f} seconds" in asked.stdout
        assert len(speech_of(tmp_path / "answer.wav")) > 12_000

        turn = serve.wait_for("turn stop")
        assert turn["transport"] == "grpc" and turn["audio_samples"] > 12_000
        assert serve.stop() == 0, "SIGTERM drains and exits cleanly"
        serve.wait_for("stopped")


def test_client_reports_nothing_listening_in_one_line() -> None:
    result = run_client("say", "hi", "--target", "127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "audiochat: nothing answers at 127.0.0.1:9 (is `audiochat serve` running?)"
    ]


def test_ask_refuses_a_file_that_is_not_audio(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not audio")
    result = run_client("ask", str(tmp_path / "notes.txt"), "--target", "127.0.0.1:9")
    assert result.returncode == 1
    assert "is not a recording audiochat reads" in result.stderr
    assert "Traceback" not in result.stderr
