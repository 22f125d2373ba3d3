"""Paired speed-up: alternation, the ratio and its spread, the tool's JSON and the report's
speed-up column read from it."""
import json
import os
import os.path as osp
import subprocess
import sys
import time

import numpy as np
import pytest

from mmdp.latency.timer import Timer
from mmdp.report import collect_run, write_report
from mmdp.runtime.paired import paired_speedup

SMALL = 'configs/streampetr_r50_small_cpu.py'


def test_rounds_alternate_and_ratio_is_b_over_a():
    calls = []

    def runner(name, seconds):
        def run(data):
            calls.append((name, data))
            time.sleep(seconds)
        return run

    result = paired_speedup(runner('a', 0.005), runner('b', 0.015),
                            lambda i: (f'a{i}', f'b{i}'), Timer('cpu'), rounds=4, warmup=2)
    # Warm-up A then B on frames 0, 1; then rounds on frames 2..5, the first model alternating.
    assert calls == [('a', 'a0'), ('b', 'b0'), ('a', 'a1'), ('b', 'b1'),
                     ('a', 'a2'), ('b', 'b2'), ('b', 'b3'), ('a', 'a3'),
                     ('a', 'a4'), ('b', 'b4'), ('b', 'b5'), ('a', 'a5')]
    per = result['per_round']
    np.testing.assert_allclose(per['speedup'], np.array(per['ms_b']) / np.array(per['ms_a']))
    assert result['speedup']['median'] == pytest.approx(np.median(per['speedup']))
    assert result['speedup']['p5'] <= result['speedup']['p25'] <= result['speedup']['median']
    assert result['speedup']['median'] <= result['speedup']['p75'] <= result['speedup']['p95']
    # 15 ms against 5 ms of sleep: about 3x whatever the machine's load.
    assert 2.0 < result['speedup']['median'] < 3.5
    assert min(per['ms_a']) >= 5.0 and min(per['ms_b']) >= 15.0


def test_too_few_rounds_are_refused():
    with pytest.raises(ValueError, match='rounds must be >= 2'):
        paired_speedup(print, print, lambda i: (i, i), Timer('cpu'), rounds=1)


def run_tool(*args):
    return subprocess.run([sys.executable, 'tools/speedup.py', *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))


def test_tool_usage_errors(tmp_path):
    out = str(tmp_path / 's.json')
    proc = run_tool(SMALL, 'none', '--against', SMALL, 'none', '--rounds', '5', '--out', out)
    assert proc.returncode == 2 and '--rounds must be >= 20' in proc.stderr
    proc = run_tool(SMALL, 'missing.pth', '--against', SMALL, 'none', '--out', out)
    assert proc.returncode == 2 and 'missing.pth does not exist' in proc.stderr
    assert not osp.exists(out)


def test_tool_json_and_report_column(tmp_path):
    """The small config against itself (random weights), then the report of that run."""
    run_dir = tmp_path / 'pruned'
    out = str(run_dir / 'speedup.json')
    proc = run_tool(SMALL, 'none', '--against', SMALL, 'none', '--rounds', '20', '--warmup', '1',
                    '--out', out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'speed-up of A over B: median' in proc.stdout
    with open(out) as f:
        result = json.load(f)
    assert result['rounds'] == 20 and len(result['per_round']['speedup']) == 20
    assert result['runtime'] == 'torch' and result['b']['config'] == SMALL
    assert result['ms_a']['median'] > 0 and result['speedup']['p5'] <= result['speedup']['p95']
    (tmp_path / 'dense').mkdir()
    record = collect_run(str(run_dir))
    assert record.speedup == result
    report = write_report([collect_run(str(tmp_path / 'dense')), record],
                          str(tmp_path / 'report'))
    text = open(report).read()
    s = result['speedup']
    assert f"| pruned | - | - | - | {s['median']:.2f}x (IQR {s['p25']:.2f}-{s['p75']:.2f}, " \
           f"20 rounds) |" in text
    assert f'pruned: against {SMALL} (torch' in text


def test_each_model_runs_at_its_own_input_size_and_amp_is_recorded(tmp_path):
    """A smaller input (JointPruning's resolution dimension) is timed at that size: the model at
    64x192 is faster than the same model at 96x256."""
    smaller = tmp_path / 'smaller.py'
    smaller.write_text(f"_base_ = ['{osp.abspath(SMALL)}']\nimg_size = (64, 192)\n")
    out = str(tmp_path / 'speedup.json')
    proc = run_tool(str(smaller), 'none', '--against', SMALL, 'none', '--rounds', '20',
                    '--warmup', '1', '--amp', '--out', out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'each model runs at its config\'s img_size: A (64, 192), B (96, 256)' in proc.stdout
    with open(out) as f:
        result = json.load(f)
    assert result['img_size'] == [64, 192] and result['img_size_b'] == [96, 256]
    assert result['precision'] == 'amp-bfloat16'
    assert result['speedup']['median'] > 1.2  # 0.5 of the pixels


def test_paired_speedup_in_onnx_runtime(tmp_path):
    """The same model twice, each exported and run in ONNX Runtime: a ratio about 1."""
    out = str(tmp_path / 'speedup.json')
    proc = run_tool(SMALL, 'none', '--against', SMALL, 'none', '--rounds', '20', '--warmup', '1',
                    '--runtime', 'ort', '--threads', '1', '--out', out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out) as f:
        result = json.load(f)
    assert result['runtime'] == 'ort'
    s = result['speedup']
    assert s['p5'] <= s['median'] <= s['p95'] and 0.7 < s['median'] < 1.4
    proc = run_tool(SMALL, 'none', '--against', SMALL, 'none', '--runtime', 'ort', '--amp',
                    '--out', out)
    assert proc.returncode == 2 and '--amp times PyTorch under autocast' in proc.stderr
