"""The math-verify worker: verdicts, the soft time limit, the hard kill and restart."""
import os
import pickle
import signal

import pytest

from qerl.rewards.verify_sandbox import DIFFERENT, EQUAL, GOLD_ERROR, NO_ANSWER, TIMEOUT, VerifySandbox


@pytest.fixture(scope="module")
def checker():
    c = VerifySandbox(timeout_s=0.5)
    yield c
    c.close()


def test_verdicts(checker):
    assert checker.judge("\\boxed{\\sqrt{117}}", "3\\sqrt{13}") == EQUAL
    assert checker.judge("so it is $(x+1)^2$", "x^2+2x+1") == EQUAL
    assert checker.judge("\\boxed{\\frac{\\pi}{3}}", "\\frac{\\pi}{4}") == DIFFERENT
    assert checker.judge("\\boxed{10^{10^{10^{10}}}}", "5") == DIFFERENT  # refused before evaluation
    assert checker.judge("I have no idea.", "5") == NO_ANSWER
    assert checker.judge("\\boxed{5}", "}{") == GOLD_ERROR


def test_slow_item_hits_the_soft_limit_and_the_worker_survives(checker):
    pid = checker._proc.pid
    assert checker.judge("\\boxed{(x+1)^{1000}}", "x^2+1") == TIMEOUT
    assert checker._proc.pid == pid  # SIGALRM stopped the item through math-verify's `except Exception`
    assert checker.judge("\\boxed{2}", "2.0") == EQUAL


def test_a_hung_worker_is_killed_and_restarted():
    c = VerifySandbox(timeout_s=0.2)
    assert c.judge("\\boxed{1}", "1") == EQUAL
    first = c._proc.pid
    os.kill(first, signal.SIGSTOP)  # a worker stuck where signals cannot reach Python
    assert c.judge("\\boxed{\\frac{1}{2}}", "0.5") == TIMEOUT
    assert c._proc.poll() is not None  # killed
    assert c.judge("\\boxed{\\frac{1}{2}}", "0.5") == EQUAL
    assert c.restarts == 1 and c._proc.pid != first
    c.close()


def test_pickles_without_its_process(checker):
    clone = pickle.loads(pickle.dumps(checker))
    assert clone._proc is None and clone.timeout_s == checker.timeout_s
    assert clone.judge("\\boxed{3}", "3") == EQUAL
    clone.close()
