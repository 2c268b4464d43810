"""kuma_dp_dev.harness.poll: the one poll-with-deadline the demos, the local-mesh harness and bench share."""

from __future__ import annotations

import pytest

from kuma_dp_dev.harness.poll import wait_until

pytestmark = pytest.mark.unit


def test_returns_the_first_truthy_value_and_treats_errors_as_not_yet() -> None:
    answers = iter([ConnectionRefusedError("not up"), None, 0, "", {"port": 5678}, "unused"])

    def check() -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_until(check, 5, "the port", interval=0) == {"port": 5678}


def test_timeout_names_what_the_last_error_and_the_context() -> None:
    def check() -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(TimeoutError) as raised:
        wait_until(check, 0, "the dev CP", interval=0, context="logs are in /tmp/w")
    message = str(raised.value)
    assert message.startswith("timed out after 0s waiting for the dev CP")
    assert "ConnectionRefusedError('refused')" in message
    assert message.endswith("; logs are in /tmp/w")


def test_before_runs_ahead_of_every_attempt_and_its_errors_stop_the_wait() -> None:
    attempts: list[int] = []

    def before() -> None:
        if len(attempts) == 2:
            raise RuntimeError("envoy exited with code 1")

    with pytest.raises(RuntimeError, match="envoy exited"):
        wait_until(lambda: attempts.append(1), 5, "Envoy", interval=0, before=before)
    assert len(attempts) == 2
