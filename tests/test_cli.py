"""``python -m custom.cli``: every command answers ``--help`` with its options and an example and runs nothing;
bad command lines stop with one line naming the problem."""

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

from custom.tools.cli import cli
from custom.tools.commands import parse_docstring

COMMANDS = sorted(cli.commands)


@pytest.fixture
def no_fire(monkeypatch):
    """Any command actually run would go through fire: make that fail the test."""
    import fire

    def refuse(*args, **kwargs):
        raise AssertionError(f"fire.Fire was called with {args}: the command ran")

    monkeypatch.setattr(fire, "Fire", refuse)


def test_the_commands_are_the_documented_ones():
    assert COMMANDS == sorted(["synthetic", "check", "build_datalist", "audit", "audit_benchmark", "export", "register",
                               "benchmark_step", "benchmark_loop", "benchmark_pipeline", "benchmark_memory",
                               "benchmark_ood_gate", "benchmark_data", "noise_benchmark", "noise_benchmark_compare",
                               "load_test", "prepare", "gpu_report", "docs", "monailabel", "monaideploy",
                               "synthetic_stats", "fit_ood", "serve_memory"])


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("name", COMMANDS)
def test_help_of_every_command_names_its_options_defaults_and_an_example_and_runs_nothing(name, flag, no_fire, capsys):
    command = cli.commands[name]
    start = time.perf_counter()
    assert cli.main([name, "--some_option", "1", flag]) == 0  # even after other options
    assert time.perf_counter() - start < 5
    out = capsys.readouterr().out
    options = command.options()
    assert options, name
    for option in options:
        assert f"  --{option.name}  (" in out, (name, option.name)
        assert ("(required)" if option.required else "(default: ") in out.split(f"  --{option.name}  ",
                                                                                1)[1].splitlines()[0]
    example = out.split("\nexample:\n", 1)[1].strip().splitlines()[0]
    assert example.startswith(f"python -m custom.cli {name}")
    assert command.doc.summary in out
    if command.overrides:
        assert "--<config id> <value>" in out


def test_help_defaults_come_from_what_the_command_runs():
    import inspect

    from custom.tools.audit.audit import audit
    from custom.tools.benchmarks.step import step

    options = {o.name: o for o in cli.commands["audit"].options()}
    assert options["checkpoint"].required
    assert options["batch_size"].default == inspect.signature(audit).parameters["batch_size"].default
    assert options["device"].text.startswith("device of the prediction pass")  # the command's own text first
    step_options = {o.name: o.default for o in cli.commands["benchmark_step"].options()}
    assert step_options == {k: p.default for k, p in inspect.signature(step).parameters.items()}
    # the benchmark's own bookkeeping argument is not offered
    assert "command_line" not in {o.name for o in cli.commands["noise_benchmark"].options()}


def test_overview_lists_every_command(capsys, no_fire):
    assert cli.main(["--help"]) == 0 and cli.main([]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in COMMANDS)


def test_unknown_command_option_or_missing_required_option_stop_with_one_line(capsys, no_fire):
    assert cli.main(["nope"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: unknown command 'nope'"
    assert cli.main(["audit", "--checkpoint", "x.pt", "--out", "a.csv"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: audit has no option --out (its options: --checkpoint, --datalist, --output,")
    assert cli.main(["noise_benchmark_compare", "--first", "a"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: noise_benchmark_compare needs --second; see python -m "
                                                    "custom.cli noise_benchmark_compare --help")
    # a command taking config overrides accepts any --id
    from custom.tools.commands import UsageError

    cli.commands["check"].check_args(["--max_epochs", "3", "--datalist#num_training", "10"])
    with pytest.raises(UsageError, match="export has no option --max_epochs"):
        cli.commands["export"].check_args(["--max_epochs", "3"])


def test_docstring_parser_reads_args_continuations_shared_names_and_the_example():
    doc = parse_docstring('''Do a thing.

    More about it.

    Args:
        alpha: the first
            and more of it.
        beta, gamma (int): shared text.

    Example:
        python -m custom.cli thing --alpha 1
    ''')
    assert doc.summary == "Do a thing." and doc.description == "More about it."
    assert doc.args == {"alpha": "the first and more of it.", "beta": "shared text.", "gamma": "shared text."}
    assert doc.example == ["python -m custom.cli thing --alpha 1"]


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["audit_benchmark", "--help"], ["check", "-h"], ["synthetic", "--help"]])
def test_help_from_the_shell_starts_no_job_and_writes_nothing(tmp_path, argv):
    """`audit_benchmark --help` once trained three runs; `check --help` checked 15,000 images."""
    cache = tmp_path / "cache"
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, NVUM_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "custom.cli", *argv], cwd=work, env=env, capture_output=True,
                         text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-2000:]
    assert seconds < 60, seconds  # an import of the package, nothing else (2 shared CPU cores)
    assert f"usage: python -m custom.cli {argv[0]}" in out.stdout and "example:" in out.stdout
    assert not cache.exists() and list(work.iterdir()) == []  # no data generated, no results written


def test_build_datalist_example_keeps_the_google_patients_out_and_the_images_found(no_fire, capsys):
    assert cli.main(["build_datalist", "--help"]) == 0
    example = capsys.readouterr().out.split("\nexample:\n", 1)[1]
    assert "--dataset nih " in example and "--holdout data_lists/nih_google_nih14.json.gz" in example
    assert "--dataset_dir /data/nih" in example
