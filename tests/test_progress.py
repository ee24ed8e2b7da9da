"""Progress written to a file (SLURM logs): whole lines, no carriage returns, throttled."""

from __future__ import annotations

import io

from tqdm.auto import tqdm

from ablate.progress import PlainProgress, format_duration, track


class FakeClock:
    def __init__(self, step_s: float):
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now


def run_steps(n_steps: int, step_s: float, every: int, initial: int = 0) -> list[str]:
    stream, clock = io.StringIO(), FakeClock(step_s)
    bar = PlainProgress(range(initial + 1, n_steps + 1), desc="dpo r=8 seed=0", total=n_steps, initial=initial,
                        every=every, stream=stream, clock=clock)
    for step in bar:
        clock.now += step_s  # the step's work
        bar.set_postfix(loss=f"{1 / step:.3f}")
    return stream.getvalue().splitlines()


def test_slow_steps_print_one_line_per_log_every_steps():
    lines = run_steps(n_steps=100, step_s=10.0, every=10)  # 10 steps = 100 s > 30 s
    expected = [f"dpo r=8 seed=0: step {s}/100 ({s}%)" for s in range(10, 101, 10)]
    assert [line.split(",")[0] for line in lines] == expected
    assert lines[0] == "dpo r=8 seed=0: step 10/100 (10%), 10.00 s/step, eta 15m00s, loss=0.100"
    assert lines[-1] == "dpo r=8 seed=0: step 100/100 (100%), 10.00 s/step, loss=0.010"


def test_fast_steps_print_at_most_one_line_per_30_s():
    lines = run_steps(n_steps=1000, step_s=0.5, every=10)  # 10 steps = 5 s: every 60th step is due
    steps = [int(line.split()[4].split("/")[0]) for line in lines]
    assert steps[0] == 10 and steps[-1] == 1000
    assert all(b - a >= 60 for a, b in zip(steps[:-1], steps[1:-1], strict=False))  # >= 30 s apart
    assert len(lines) == 2 + (1000 - 10) // 60


def test_a_resumed_run_counts_its_rate_from_where_it_resumed():
    lines = run_steps(n_steps=20, step_s=2.0, every=5, initial=10)
    assert lines[0].startswith("dpo r=8 seed=0: step 15/20 (75%), 2.00 s/step, eta 10s")


def test_a_file_gets_plain_lines_and_a_terminal_gets_tqdm(tmp_path):
    with open(tmp_path / "stderr.log", "w") as log:
        bar = track(range(3), desc="warming up", stream=log)
        assert isinstance(bar, PlainProgress)
        list(bar)
    text = (tmp_path / "stderr.log").read_text()
    assert "\r" not in text and text.splitlines()[-1].startswith("warming up: step 3/3 (100%)")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(track(range(3), desc="warming up", stream=Terminal()), tqdm)


def test_durations_read_like_a_log():
    assert [format_duration(s) for s in (5, 59.6, 723, 11_100)] == ["5s", "1m00s", "12m03s", "3h05m"]
