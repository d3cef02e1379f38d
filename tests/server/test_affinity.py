"""``--cpu-affinity``: what it accepts, what it refuses, and what pinning does to threads.

The supervisor's side (a worker per slot, a restart on its slot's CPU) is tested with a
real gateway in ``test_workers.py``; this module tests the parsing and the pinning of
one process, the latter in a child process so the test runner itself stays unpinned.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from capirelay.config import ConfigError
from capirelay.server.affinity import WORKER_CPU_ENV, cpus_for_workers, pin_from_environment
from capirelay.server.run import main as run_main

ALLOWED = sorted(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["off", "OFF", " off ", "", "none"])
def test_off_pins_nothing(value: str) -> None:
    assert cpus_for_workers(value) is None


def test_auto_names_every_cpu_this_process_may_use_in_order() -> None:
    assert cpus_for_workers("auto") == ALLOWED


def test_a_cpu_list_is_read_as_linux_writes_it() -> None:
    first, last = ALLOWED[0], ALLOWED[-1]
    assert cpus_for_workers(str(first)) == [first]
    assert cpus_for_workers(f"{first}-{last}") == [c for c in range(first, last + 1)]
    # Repeats keep their first place: a CPU named twice is one slot, not two.
    assert cpus_for_workers(f"{last},{first},{last}") == list(dict.fromkeys([last, first]))


@pytest.mark.parametrize("value", ["fast", "0-", "a-b", "1.5", "0,,1", "1_0", "+1", "-1", "\u0660"])
def test_an_unreadable_value_names_the_option_and_the_forms_it_takes(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cpus_for_workers(value)
    message = str(caught.value)
    assert message.startswith("--cpu-affinity (or CAPIRELAY_CPU_AFFINITY): ")
    assert "'auto'" in message and "0-3,6" in message


def test_a_backwards_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"CAPIRELAY_CPU_AFFINITY\): '3-1' is not a CPU range"):
        cpus_for_workers("3-1")


def test_a_huge_range_is_refused_at_once_not_spelled_out() -> None:
    """A typo such as ``0-100000000`` once built the whole list before refusing it
    (a minute and gigabytes); the ends are checked first."""
    with pytest.raises(ConfigError, match="CPU 100000000 is not one this gateway may run on"):
        cpus_for_workers("0-100000000")
    with pytest.raises(ConfigError, match=f"CPU {max(ALLOWED) + 10**12} is not one"):
        cpus_for_workers(f"{ALLOWED[0]}-{max(ALLOWED) + 10**12}")


def test_a_cpu_the_gateway_may_not_use_is_refused_with_the_ones_it_may() -> None:
    outside = max(ALLOWED) + 1000
    with pytest.raises(ConfigError) as caught:
        cpus_for_workers(f"{ALLOWED[0]},{outside}")
    message = str(caught.value)
    assert f"CPU {outside} is not one this gateway may run on" in message
    assert "allowed: " in message and "or use 'auto'" in message


def test_a_worker_given_something_else_than_a_cpu_number_runs_unpinned_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(WORKER_CPU_ENV, "one")
    with caplog.at_level(logging.WARNING, logger="capirelay.server"):
        pin_from_environment()
    assert WORKER_CPU_ENV not in os.environ
    assert os.sched_getaffinity(0) == set(ALLOWED)
    assert f"{WORKER_CPU_ENV}='one' is not a CPU number; this worker runs unpinned" in caplog.text


def test_serve_refuses_a_bad_value_before_binding_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "capirelay.toml"
    config.write_text(
        f'storage = "sqlite:///{tmp_path}/o.db"\n[pixels.1234567890]\ndefault_country = "US"\n'
    )
    assert run_main(["--config", str(config), "--cpu-affinity", "fast", "--port", "0"]) == 2
    assert (
        "--cpu-affinity (or CAPIRELAY_CPU_AFFINITY): expected 'off', 'auto' or a CPU list"
        in capsys.readouterr().err
    )


def test_pinning_moves_running_threads_and_threads_started_later_inherit_it() -> None:
    cpu = ALLOWED[-1]
    child = textwrap.dedent(
        f"""
        import os, threading
        from capirelay.server.affinity import pin_this_process

        started = threading.Event()
        stop = threading.Event()
        def wait():
            started.set()
            stop.wait()
        before = threading.Thread(target=wait)
        before.start()
        started.wait()
        assert pin_this_process({cpu})
        seen = {{}}
        def report():
            seen["after"] = sorted(os.sched_getaffinity(threading.get_native_id()))
        after = threading.Thread(target=report)
        after.start()
        after.join()
        print(sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(before.native_id)),
              seen["after"])
        stop.set()
        before.join()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split("] ") == [f"[{cpu}", f"[{cpu}", f"[{cpu}]\n"]


def test_a_cpu_no_longer_allowed_leaves_the_process_unpinned_with_a_warning() -> None:
    child = textwrap.dedent(
        f"""
        import logging, os
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from capirelay.server.affinity import pin_this_process
        print(pin_this_process({max(ALLOWED) + 1000}), sorted(os.sched_getaffinity(0)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == f"False {ALLOWED}"
    assert "could not keep process" in done.stderr and "it runs unpinned" in done.stderr


def test_capirelay_serve_reads_the_option_from_its_environment_variable(tmp_path: Path) -> None:
    """``CAPIRELAY_CPU_AFFINITY`` reaches the runner as ``--cpu-affinity`` does: a value
    it cannot read stops ``capirelay serve`` with the option named, before it listens."""
    config = tmp_path / "capirelay.toml"
    config.write_text(
        f'storage = "sqlite:///{tmp_path}/o.db"\n[pixels.1234567890]\ndefault_country = "US"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
    env["CAPIRELAY_CPU_AFFINITY"] = "9-1"
    done = subprocess.run(
        [sys.executable, "-m", "capirelay", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--cpu-affinity (or CAPIRELAY_CPU_AFFINITY): '9-1' is not a CPU range" in done.stderr
