"""What an operator reads in the log of `audiochat serve`: where turns go, why one failed, each line once."""

from __future__ import annotations

import socket
import subprocess

from tests.processes import AUDIOCHAT, REPO, audiochat_serve, offline_environment


def test_a_refused_turn_is_a_warning_with_the_reason_and_the_upstream_request_id() -> None:
    with audiochat_serve() as serve:
        ready = serve.wait_for("audiochat ready")
        target = f"127.0.0.1:{ready['grpc_port']}"
        # An audio model refuses a turn with audio on neither side; the offline voice, like OpenAI, says
        # so with a 400 that carries an x-request-id.
        command = [
            *AUDIOCHAT,
            "say",
            "hi",
            "--text-only",
            "--model",
            "gpt-4o-audio-preview",
            "--target",
            target,
        ]
        said = subprocess.run(
            command, env=offline_environment(), capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert said.returncode == 1
        failed = serve.wait_for("turn error")
        assert serve.stop() == 0
    assert failed["level"] == "warning"
    assert failed["error_code"] == "invalid_argument"
    assert "requires that either input content or output modality contain audio" in failed["error_message"]
    assert failed["upstream_request_id"].startswith("req_")
    started = [line for line in serve.log_lines if line["message"].startswith("Started server process")]
    assert len(started) == 1, "three uvicorn servers, one process"


def test_the_upstream_base_url_is_logged_at_start() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1/"
    environment = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": base_url}
    with audiochat_serve("--upstream", "openai", env=environment) as serve:
        line = serve.wait_for("upstream: OpenAI Chat Completions")
        assert serve.stop() == 0
    assert line["base_url"] == base_url
