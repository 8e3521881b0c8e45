"""The `recray` command dispatches to its subcommands' modules."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from recray.commands import COMMANDS, main


def test_every_command_module_has_a_main():
    for name, (module, _) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_is_an_error_that_lists_the_commands(capsys):
    assert main(["tarin"]) == 2
    err = capsys.readouterr().err
    assert "unknown command `tarin`" in err and "train" in err


@pytest.mark.parametrize("command", ["run", "train"])
def test_python_m_recray_reaches_the_stage_flags(command):
    script = [sys.executable, "-m", "recray", command, "--help"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--num-workers" in done.stdout and "--config" in done.stdout
