"""The `xmodal` command: help on every command; every config or usage error one line and
exit status 2 naming the key; a bug elsewhere keeps its traceback."""

import os
import re
import subprocess
import sys
import time

import pytest

from xmodal import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _xmodal(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", "xmodal.cli", *args], capture_output=True,
                        text=True, timeout=120, **kwargs)


@pytest.mark.slow
def test_help_on_every_command_lists_commands_flags_and_the_config_reference():
  top = _xmodal("--help")
  assert top.returncode == 0, top.stderr
  for text in ("xmodal train [--config=FILE.py[:ARG]] [--config.KEY=VALUE ...] [--workdir=DIR]",
               "xmodal eval [--workdir=DIR] [--step=N]", "--num_processes", "docs/config.md"):
    assert text in top.stdout, text
  train = _xmodal("train", "--help")
  assert train.returncode == 0, train.stderr
  for text in ("--config FILE.py[:ARG]", "--config.KEY=VALUE", "--workdir DIR", "--coordinator",
               "docs/config.md"):
    assert text in train.stdout, text
  evaluate = _xmodal("eval", "-h")
  assert evaluate.returncode == 0, evaluate.stderr
  for text in ("--step N", "--config.KEY=VALUE", "eval.*", "data.eval_files", "docs/config.md"):
    assert text in evaluate.stdout, text
  nothing = _xmodal()
  assert nothing.returncode == 2 and "COMMAND" in nothing.stderr


@pytest.mark.slow
def test_a_typo_in_an_override_is_one_line_with_the_closest_key(tmp_path):
  result = _xmodal("train", "--config.optim.lrate=1", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  assert result.stderr == ("xmodal train: error: config.optim.lrate: unknown key; did you "
                           "mean config.optim.lr? (every key: docs/config.md)\n")
  assert not (tmp_path / "run").exists()


def _config_file(tmp_path, body, name="exp.py"):
  path = tmp_path / name
  path.write_text("from xmodal import default_config\n" + body)
  return str(path)


@pytest.mark.parametrize("args, message", [
    (["train", "--config.optim.lrate=1"], "config.optim.lrate: unknown key; did you mean "
                                          "config.optim.lr?"),
    (["train", "--config.batch_size", "abc"], "config.batch_size: expected an integer, got 'abc'"),
    (["train", "--config.batch_size=100"], "config.batch_size: 100 is not divisible by the 8 "
                                           "batch shards"),
    (["train", "--config.data.flip=maybe"], "config.data.flip: expected true or false"),
    (["train", "--config=MISSING"], "--config: no such file"),
    (["train", "--config=SYNTAX"], "syntax.py:2: expected ':' (--config)"),
    (["train", "--config=NONE"], "none.py: get_config returned None"),
    (["train", "--config=NOARG:x"], "noarg.py: get_config() takes no argument"),
    (["train", "--config=TYPO"], "config.optim.lrate: unknown key; did you mean config.optim.lr?"),
    (["train", "--bogus"], "xmodal train: error: unrecognized arguments: --bogus"),
    (["eval", "--workdir=NOWHERE"], "config.json: not found; is"),
    (["train", "--num_processes=2"], "--coordinator, --num_processes and --process_id go "
                                     "together"),
])
def test_config_and_usage_errors_are_one_line_and_exit_2(tmp_path, capsys, args, message):
  files = {
      "MISSING": str(tmp_path / "missing.py"),
      "SYNTAX": _config_file(tmp_path, "def get_config(arg=None)\n  return 1\n", "syntax.py"),
      "NONE": _config_file(tmp_path, "def get_config(arg=None):\n  pass\n", "none.py"),
      "NOARG": _config_file(tmp_path, "def get_config():\n  return default_config.get_config()\n",
                            "noarg.py"),
      "TYPO": _config_file(tmp_path, "def get_config(arg=None):\n  c = default_config.get_config()"
                                     "\n  c.optim.lrate = 1\n  return c\n", "typo.py"),
      "NOWHERE": str(tmp_path / "nowhere")}
  for name, value in files.items():
    args = [a.replace(name, value) for a in args]
  if args[0] == "train":
    args.append(f"--workdir={tmp_path / 'run'}")
  assert _main(["xmodal", *args]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1, err
  assert not (tmp_path / "run").exists()


def _main(argv) -> int:
  """cli.main's exit status, also where argparse exits."""
  try:
    return cli.main(argv)
  except SystemExit as e:
    return e.code


def test_a_bug_elsewhere_keeps_its_traceback(tmp_path):
  """An error that is not the project's own (here a ValueError from a config file's code,
  raised after it loaded) is not swallowed into one line."""
  path = _config_file(tmp_path, "def get_config(arg=None):\n"
                                "  raise ValueError('a bug in the config code')\n")
  with pytest.raises(ValueError, match="a bug in the config code"):
    cli.main(["xmodal", "train", f"--config={path}", f"--workdir={tmp_path / 'run'}"])


def test_overrides_split_from_the_other_flags():
  rest, overrides = cli.split_overrides(
      ["--config=x.py:a", "--config.a.b=1", "--workdir", "w", "--config.c", "2", "--config.flag",
       "--noconfig.other", "--config.mesh.data", "-1", "--config.last"])
  assert rest == ["--config=x.py:a", "--workdir", "w"]
  assert overrides == [("a.b", "1"), ("c", "2"), ("flag", None), ("other", "false"),
                       ("mesh.data", "-1"), ("last", None)]


@pytest.mark.slow
def test_train_on_a_terminal_draws_a_progress_bar_under_the_log_lines(tmp_path):
  import fcntl
  import pty
  import select
  import struct
  import termios
  config = tmp_path / "tiny_run.py"
  config.write_text(
      f"import sys\nsys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
      "from tiny import make_tiny_config\n"
      "def get_config(arg=None):\n"
      "  return make_tiny_config(**{'train.total_steps': 6, 'train.log_every': 3,\n"
      "                             'data.shapes_eval_size': 64})\n")
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))   # a real size
  proc = subprocess.Popen([sys.executable, "-m", "xmodal.cli", "train", f"--config={config}",
                           f"--workdir={tmp_path / 'run'}"], stdout=slave, stderr=slave)
  os.close(slave)
  out, deadline = b"", time.time() + 300
  try:
    while time.time() < deadline:
      if select.select([master], [], [], 1.0)[0]:
        try:
          chunk = os.read(master, 65536)
        except OSError:                # the child closed the terminal
          break
        if not chunk:
          break
        out += chunk
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-2000:]
  finally:
    if proc.poll() is None:
      proc.kill()
    os.close(master)
  text = out.decode(errors="replace")
  assert "\r" in text and "6/6 [" in text and "step/s" in text and "loss=" in text, text
  # The log lines stay whole: tqdm clears the bar, writes the line, draws the bar again.
  assert re.search(r"\[step 6\] grad_norm=[^\r\n]* data/epoch=0 train/skipped_steps=0\r\n", text), text
