"""Failure classification, without a process: the first matching rule wins."""

from __future__ import annotations

import re
import signal

from bootstrap import errors
from bootstrap.run import watchdog
from bootstrap.run.diagnose import before_start, classify

TRACEBACK = """Traceback (most recent call last):
  File "train.py", line 3, in <module>
    main()
torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
"""


def test_a_python_exception_is_the_users_with_its_type() -> None:
    tail = 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: bad lr\n'
    d = classify(1, None, tail)
    assert (d.reason, d.category, d.evidence) == ("exception", "user", "ValueError: bad lr")


def test_cuda_out_of_memory_is_the_users_an_ecc_error_is_not() -> None:
    assert classify(1, None, TRACEBACK).reason == "cuda"
    ecc = "RuntimeError: CUDA error: uncorrectable ECC error encountered\n"
    assert (classify(1, None, ecc).reason, classify(1, None, ecc).category) == \
        ("gpu", "infrastructure")


def test_nccl_beats_the_traceback_it_caused() -> None:
    tail = ("NCCL WARN NET/Socket : peer 10.0.0.2 closed the connection\n" + TRACEBACK)
    d = classify(1, None, tail)
    assert (d.reason, d.category) == ("nccl", "infrastructure") and "NCCL WARN" in d.evidence


def test_oom_is_named_by_the_cgroup_counter_not_by_137() -> None:
    assert classify(137, signal.SIGKILL, "", oom_kills=1).reason == "oom"
    assert classify(137, signal.SIGKILL, "").reason == "signal"  # a kill from outside


def test_hang_category_follows_the_stacks() -> None:
    collective = 'File "/x/torch/distributed/distributed_c10d.py", line 2050 in all_reduce'
    assert classify(124, signal.SIGTERM, "", hang=True, stacks=collective).category == \
        "infrastructure"
    own = 'File "train.py", line 9 in wait_for_my_queue'
    assert classify(124, signal.SIGTERM, "", hang=True, stacks=own).category == "user"
    # A hang outranks the SIGTERM the watchdog itself sent.
    assert classify(143, signal.SIGTERM, "", hang=True).reason == "hang"


def test_a_plain_exit_code_is_the_commands_own() -> None:
    assert (classify(3, None, "some output\n").reason, classify(3, None, "").evidence) == \
        ("exit", "the command exited 3")


def test_failures_before_the_command_carry_their_own_diagnosis() -> None:
    assert before_start(errors.PreflightFailed("x")).category == "infrastructure"
    assert before_start(errors.ConfigError("x")).reason == "config"
    # The ones a table of class names forgot: named now, by the class itself.
    assert (before_start(errors.UploadError("x")).reason,
            before_start(errors.TransferError("x")).reason) == ("upload", "transfer")
    assert before_start(errors.Terminated(15)).reason == "signal"

    class SomethingNew(errors.BootstrapError):
        pass

    assert (before_start(SomethingNew("x")).reason, before_start(SomethingNew("x")).evidence) \
        == ("bootstrap", "x")


def test_every_error_class_names_a_reason_and_a_known_category() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.BootstrapError)]
    assert len(classes) >= 14
    for cls in classes:
        assert cls.reason and cls.category in ("user", "infrastructure"), cls


def test_innermost_frames_of_the_main_thread() -> None:
    dump = ('Thread 0x0001 (most recent call first):\n'
            '  File "/usr/lib/python3.11/threading.py", line 320 in wait\n\n'
            'Current thread 0x0002 (most recent call first):\n'
            '  File "/job/train.py", line 12 in stuck_here\n'
            '  File "/job/train.py", line 30 in step\n'
            '  File "/job/train.py", line 40 in <module>\n')
    assert watchdog.innermost(dump) == \
        "stuck_here (train.py:12) <- step (train.py:30) <- <module> (train.py:40)"


def test_the_dump_signal_matches_the_injected_hook() -> None:
    hook = (watchdog.STACKDUMP_DIR / "sitecustomize.py").read_text()
    m = re.search(r"^SIGNAL_OFFSET = (\d+)", hook, re.M)
    assert m is not None and int(m.group(1)) == watchdog.SIGNAL_OFFSET
