"""The stop request behind SIGINT/SIGTERM handling, signalled in this very process."""

from __future__ import annotations

import os
import signal

import pytest

from pipelines.interrupt import Interrupted, StopRequest


def test_before_the_output_is_held_a_signal_stops_at_once_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    stop.install()
    try:
        with pytest.raises(Interrupted, match="stopped by SIGTERM") as caught:
            os.kill(os.getpid(), signal.SIGTERM)
        assert caught.value.signum == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_while_running_the_first_signal_drains_and_the_second_stops_now():
    stop = StopRequest(grace_s=60)
    stop.immediate = False
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and not stop.must_stop_now() and stop.exit_code == 130
        with pytest.raises(Interrupted):
            stop.check()  # a phase with nothing to drain ends here
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.must_stop_now() and stop.exit_code == 130  # the first signal names the code
    finally:
        stop.restore()
