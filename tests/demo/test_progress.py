"""The demo's terminal view of a stage: progress lines on screen, the whole output in the stage's log."""
from __future__ import annotations

import io
import sys
import textwrap

import pytest

from affectverse_ds import demo

# a stage that draws the trainer's tqdm bar (same arguments as train/loop.py), logs noise, and prints
# evaluator-style lines
STAGE = textwrap.dedent("""
    import sys, time
    from tqdm import tqdm
    print("noise: deepspeed says hello", flush=True)
    bar = tqdm(total=6, desc="train", unit="step", dynamic_ncols=True, mininterval=0)
    for i in range(6):
        time.sleep(0.01)
        bar.update(1)
        bar.set_postfix(loss=f"{1.0 / (i + 1):.4f}", lr="1.00e-03")
    bar.close()
    sys.stderr.write("train:  50%|#    | 3/6 [00:01<00:01, 2.0step/s]FutureWarning: glued on by another writer")
    sys.stderr.flush()
    print(flush=True)
    print("[eval] ewm@step_000010 affectdyn avt: 1.5 s", flush=True)
    print("[eval] lora@step_000010 affectdyn at: 2.0 s", flush=True)
""")


def test_stage_progress_on_screen_everything_in_the_log(tmp_path, monkeypatch):
    screen = io.StringIO()
    log = tmp_path / "stage.log"
    monkeypatch.chdir(tmp_path)  # stages run in the current folder
    demo._run([sys.executable, "-c", STAGE], log, demo.Progress("train ewm", eval_total=2, every=0.0, stream=screen))
    shown = screen.getvalue().splitlines()
    bars = [line for line in shown if "train:" in line]
    assert bars and all(line.startswith("  [train ewm] train:") for line in bars)
    final = [line for line in bars if "6/6" in line]
    assert final and "loss=0.1667" in final[-1] and "<" in final[-1]  # final state, loss, elapsed<ETA
    assert bars[-1].endswith("3/6 [00:01<00:01, 2.0step/s]")  # the bar without what was glued after it
    assert "  [train ewm] evaluated 1/2: ewm@step_000010 affectdyn avt (1.5 s)" in shown
    assert "  [train ewm] evaluated 2/2: lora@step_000010 affectdyn at (2.0 s)" in shown
    assert not any("noise" in line or "FutureWarning" in line for line in shown)
    text = log.read_text()
    assert "noise: deepspeed says hello" in text and "6/6" in text and "[eval] lora@step_000010" in text


def test_bar_lines_are_throttled_off_a_terminal_and_the_last_one_kept():
    screen = io.StringIO()
    progress = demo.Progress("train lora", every=3600.0, stream=screen)
    for step in range(1, 11):
        progress.line(f"train:  {step * 10}%|#   | {step}/10 [00:0{step}<00:10, 1.0step/s, loss=0.5]")
    progress.close()
    shown = screen.getvalue().splitlines()
    assert [line.split("| ")[-1].split(" ")[0] for line in shown] == ["1/10", "10/10"]


def test_failed_stage_stops_with_the_log_tail(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # stages run in the current folder
    code = "import sys; print('the real reason'); sys.exit(3)"
    with pytest.raises(SystemExit) as stop:
        demo._run([sys.executable, "-c", code], tmp_path / "bad.log", demo.Progress("x", stream=io.StringIO()))
    assert "exit 3" in str(stop.value) and "the real reason" in str(stop.value)
