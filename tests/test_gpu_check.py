"""The GPU check: refuses at once without a GPU; every step runs on the CPU at small size (the
compiled runtime's table, validation and speed-ups included) and writes its figures as JSON and
Markdown."""
import json
import os
import subprocess
import sys

import pytest
import torch


def run(*args):
    return subprocess.run([sys.executable, 'tools/gpu_check.py', *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))


@pytest.mark.skipif(torch.cuda.is_available(), reason='tests the machine without a GPU')
def test_without_a_gpu_it_stops_at_once(tmp_path):
    proc = run(str(tmp_path / 'out'))
    assert proc.returncode == 1 and 'error: no CUDA device' in proc.stderr
    assert not (tmp_path / 'out').exists()
    proc = subprocess.run(['bash', 'tools/gpu_check.sh', str(tmp_path / 'out')],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and 'no NVIDIA GPU here' in proc.stderr


def test_every_step_at_small_size_on_the_cpu(tmp_path):
    proc = run(str(tmp_path), '--cpu-small')
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / 'gpu_check.json') as f:
        result = json.load(f)
    # No time budget at small size: every step ran, eager ones first.
    assert result['size'] == 'cpu-small' and result['over_budget'] == [] and \
        list(result['tables']) == ['torch', 'whole/torch', 'compile']
    with open(result['tables']['compile']) as f:
        assert json.load(f)['meta']['runtime'] == 'compile'
    for runtime in ('torch', 'compile'):
        assert set(result['validation'][runtime]) >= {'lut_bilinear', 'lut_linear', 'flops'}
    assert set(result['structures']) == {'mdp45', 'mdp50', 'mdp70', 'halp45', 'mdp45_whole'}
    for name, s in result['structures'].items():
        assert os.path.isfile(s['weights']), name
        # At small size the compile speed-ups run for MDP-45 only (inductor's minutes per shape).
        compiled = {'compile/fp32', 'compile/amp'} if name == 'mdp45' else set()
        assert set(result['speedups'][name]) == {'torch/fp32', 'torch/amp'} | compiled, name
        for speedup in result['speedups'][name].values():
            assert speedup['p5'] <= speedup['median'] <= speedup['p95']
    # The whole-detector structure prunes the head too: its exported config has a pruned head.
    assert 'PrunedStreamPETRHead' in open(result['structures']['mdp45_whole']['config']).read()
    text = (tmp_path / 'gpu_check.md').read_text()
    # A name cell may carry the solver's status (CPU timings decide it): match the row's start.
    assert '| mdp45' in text and '| torch | fp32 |' in text and '1.18x' in text
    assert 'Skipped:' in text and 'compiled speed-ups of mdp50, mdp70, halp45, mdp45_whole' in text
    assert '| mdp45_whole' in text and '| torch | amp |' in text
    assert 'Latency tables profiled in: torch, whole/torch, compile.' in text
    assert '| compile | lut_bilinear |' in text and '| compile | fp32 |' in text
    assert '| compile | amp |' in text


def test_no_step_starts_once_the_time_budget_is_spent(tmp_path):
    proc = run(str(tmp_path), '--cpu-small', '--budget-s', '0')
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / 'gpu_check.json') as f:
        result = json.load(f)
    assert result['budget_s'] == 0 and not result['tables'] and not result['structures']
    # Every step is named, in the order of priority: eager figures, then the compiled runtime.
    steps = result['over_budget']
    assert steps[:3] == ['latency table (torch)', 'validating the latency models (torch)',
                         'latency table (whole detector, torch)']
    assert steps[-1] == 'mdp45: paired speed-up against dense (compile, amp)'
    assert steps.index('mdp45_whole: paired speed-up against dense (torch, amp)') < \
        steps.index('latency table (compile)')
    text = (tmp_path / 'gpu_check.md').read_text()
    assert 'Not started, the time budget of 0 s being spent: latency table (torch);' in text
    proc = run(str(tmp_path / 'bad'), '--cpu-small', '--budget-s', '-1')
    assert proc.returncode == 2 and '--budget-s must be >= 0 seconds, got -1.0' in proc.stderr
    assert not (tmp_path / 'bad').exists()
