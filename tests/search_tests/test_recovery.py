"""Recovery without a real search: lost workers recognised, their trials failed once with a
reason and retried (up to MAX_RETRY, intermediate values kept), checkpoints shared by retries."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.execution import recovery


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(direction="maximize")


def _running(study: optuna.Study, worker: str, epochs: int = 2) -> optuna.Trial:
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    trial.set_user_attr(recovery.WORKER, worker)
    for epoch in range(1, epochs + 1):
        trial.report(0.5 + epoch / 10, epoch)
    return trial


def test_a_retry_taken_but_not_yet_claimed_is_not_lost(study: optuna.Study,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(recovery.NODE_ENV, "node-a")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = f"node-a:{ended.stdout.strip()}"
    lost = _running(study, dead)
    assert recovery.fail_lost_trials(study, lost=recovery.local_worker_dead) == [lost.number]
    # A worker takes the retry: RUNNING, its own id not yet recorded (claim_at_birth does
    # that next). A search starting on this host at that moment must leave it alone.
    taken = study.ask()
    assert recovery.retry_of(study.trials[taken.number]) == lost.number
    assert recovery.WORKER not in study.trials[taken.number].user_attrs
    assert recovery.fail_lost_trials(study, lost=recovery.local_worker_dead) == []
    assert study.trials[taken.number].state == TrialState.RUNNING


def test_a_worker_of_this_host_whose_process_ended_is_dead(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv(recovery.NODE_ENV, "node-a")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    assert recovery.local_worker_dead(f"node-a:{ended.stdout.strip()}")
    assert not recovery.local_worker_dead(recovery.worker_id())  # this process
    assert not recovery.local_worker_dead(f"node-b:{ended.stdout.strip()}")  # another node's
    assert not recovery.local_worker_dead("node-a:not-a-pid")


def test_lost_trials_fail_once_with_their_reason_and_are_retried(study: optuna.Study) -> None:
    lost = _running(study, "node-a:1")
    alive = _running(study, "node-a:2")
    seen = []
    failed = recovery.fail_lost_trials(
        study, lost={"node-a:1"}.__contains__,
        on_lost=lambda trial, reason, again: seen.append((trial.number, reason, again)))
    assert failed == [lost.number]
    frozen = study.trials[lost.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["fail_reason"] == "worker lost"
    assert study.trials[alive.number].state == TrialState.RUNNING
    (number, reason, again), = seen
    assert (number, reason) == (lost.number, "worker lost")
    retry = study.trials[again]
    assert retry.state == TrialState.WAITING and retry.params == frozen.params
    assert recovery.retry_of(retry) == lost.number
    assert retry.intermediate_values == {1: 0.6, 2: 0.7}  # the retry resumes where it was
    # A second look changes nothing: the trial is finished.
    assert recovery.fail_lost_trials(study, lost={"node-a:1"}.__contains__) == []


def test_a_trial_is_retried_at_most_max_retry_times(study: optuna.Study) -> None:
    chain = [_running(study, "w").number]
    for _ in range(recovery.MAX_RETRY + 1):
        study.tell(chain[-1], state=TrialState.FAIL)
        again = recovery.retry(study, study.trials[chain[-1]])
        if again is None:
            break
        started = study.ask()  # the WAITING retry, taken by the next worker
        assert started.number == again
        chain.append(again)
    assert len(chain) == 1 + recovery.MAX_RETRY
    assert all(recovery.retry_of(study.trials[n]) == chain[0] for n in chain[1:])


def test_every_retry_shares_the_first_trial_s_checkpoint(study: optuna.Study,
                                                         tmp_path: Path) -> None:
    first = _running(study, "w")
    study.tell(first.number, state=TrialState.FAIL)
    again = recovery.retry(study, study.trials[first.number])
    assert again is not None
    path = recovery.checkpoint_path(tmp_path, "s", study.trials[again])
    assert path == recovery.checkpoint_path(tmp_path, "s", study.trials[first.number])
    assert path == tmp_path / "s" / f"trial-{first.number}.pt"


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_trial_is_its_worker_s_from_birth_even_if_an_interrupt_lands_in_ask(
        study: optuna.Study) -> None:
    import os
    import signal

    real_ask = study.ask

    def ask_then_interrupted(fixed_distributions: object = None) -> optuna.Trial:
        trial = real_ask()
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after Optuna created the trial
        for _ in range(50):  # time for any thread to take the signal, and Python to check
            time.sleep(0.002)
        return trial

    study.ask = ask_then_interrupted  # type: ignore[method-assign]
    recovery.claim_at_birth(study)
    # Another thread runs, as MLflow's queue feeder and the progress display do in a search:
    # the kernel may hand it the signal, and Python still raises in the main thread.
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    interrupted = False
    try:
        study.ask()
        for _ in range(100):  # Python runs the handler at its next check, here at the latest
            time.sleep(0)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        other.join()
    assert interrupted
    (trial,) = study.trials
    assert trial.state == TrialState.RUNNING
    assert trial.user_attrs[recovery.WORKER] == recovery.worker_id()  # claimed before it
    assert recovery.fail_own_trials(study) == [trial.number]
    assert study.trials[trial.number].user_attrs["fail_reason"] == "interrupted"
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert recovery.retry_of(retry) == trial.number
    assert recovery.fail_own_trials(study) == []  # others' trials, and finished ones, stay


@pytest.mark.usefixtures("ctrl_c_raises")
def test_interrupts_held_are_delivered_once_the_block_ends() -> None:
    import os
    import signal

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # what search.run does with SIGTERM

    before = signal.signal(signal.SIGTERM, terminate)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # a thread the kernel may give the signal to
    other.start()
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with recovery.interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                for step in range(50):
                    time.sleep(0.002)
                    steps.append(step)
        assert len(steps) == 50  # the block ran to its end
        assert signal.getsignal(signal.SIGTERM) is terminate  # the handlers are back
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        stop.set()
        other.join()
        signal.signal(signal.SIGTERM, before)


def test_a_sigterm_to_a_search_stays_asked_until_the_next_search() -> None:
    import os
    import signal

    from objectives.interrupts import check_stop, clear_stop
    from search.execution.driver import _interrupt_on_sigterm

    before = signal.getsignal(signal.SIGTERM)
    try:
        _interrupt_on_sigterm()
        check_stop()  # nothing asked yet
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode
        for _ in range(2):  # as often as it is checked
            with pytest.raises(KeyboardInterrupt):
                check_stop()
        _interrupt_on_sigterm()  # the next search in this process starts afresh
        check_stop()
    finally:
        signal.signal(signal.SIGTERM, before)
        clear_stop()
