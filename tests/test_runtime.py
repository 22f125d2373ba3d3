"""One notion of runtime: the latency tools' --runtime (and the former --mode), the table field
that records it, tables written before it; the ort runtime (ONNX Runtime on exported graphs) and
the compile runtime (torch.compile) in the latency tables, their validation and the benchmark;
trt refused where tensorrt is absent."""
import argparse
import importlib.util
import json
import os

import numpy as np
import onnxruntime
import pytest
import torch
from mmdet.models.backbones import ResNet
from torch._dynamo.utils import counters

from mmdp.cli import run as run_tool
from mmdp.latency import LatencyTable, TableMismatchError, Timer, device_name, make_meta
from mmdp.latency.profiler import _Heads, profile_layers
from mmdp.runtime import compiled, ort
from mmdp.runtime.runtimes import (DEPLOYED_RUNTIMES, DETECTOR_RUNTIMES, TABLE_RUNTIMES,
                                   add_runtime_argument, detector_runner, resolve_runtime)
from mmdp.structure import derive_structure
from tool_loader import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = os.path.join(ROOT, 'configs', 'streampetr_r50_small_cpu.py')
SHAPE = (1, 3, 32, 64)


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_runtime_argument(parser, TABLE_RUNTIMES)
    return resolve_runtime(parser.parse_args(argv))


def test_runtime_argument_and_mode_alias(capsys):
    assert (parse().runtime, parse().mode) == ('torch', 'eager')
    assert (parse('--runtime', 'cudagraph').runtime, parse('--runtime', 'cudagraph').mode) == (
        'cudagraph', 'cudagraph')
    assert parse('--mode', 'eager').runtime == 'torch'
    assert parse('--mode', 'cudagraph').runtime == 'cudagraph'
    assert (parse('--runtime', 'ort').runtime, parse('--runtime', 'ort').mode) == ('ort', 'ort')
    assert parse('--runtime', 'compile').mode == 'compile'
    for argv in (('--runtime', 'inductor'), ('--mode', 'ort'),
                 ('--runtime', 'torch', '--mode', 'eager')):
        with pytest.raises(SystemExit):
            parse(*argv)
    assert 'not allowed with argument' in capsys.readouterr().err


def test_table_records_its_runtime_and_refuses_another(tmp_path):
    backbone = ResNet(depth=18, out_indices=(2, 3))
    backbone.eval()
    structure = derive_structure(backbone, SHAPE)
    path = tmp_path / 'table.json'
    LatencyTable.new(structure, make_meta('cpu', 'fp32', SHAPE, 64, 'cudagraph', 1, 0)).save(path)
    here = dict(device=device_name('cpu'), input_shape=SHAPE, dtype='fp32')
    assert LatencyTable.load(path, runtime='cudagraph', **here).meta['runtime'] == 'cudagraph'
    with pytest.raises(TableMismatchError, match="runtime is 'cudagraph' in the table but "
                                                 "'torch' here"):
        LatencyTable.load(path, runtime='torch', **here)
    with pytest.raises(ValueError, match=r"profiled in one of \('torch', 'cudagraph', 'compile', "
                                         r"'ort', 'trt'\), found runtime 'eager'"):
        make_meta('cpu', 'fp32', SHAPE, 64, 'eager', 1, 0)
    # A table written with the former `mode` field reads as its runtime.
    data = json.loads(path.read_text())
    data['meta']['mode'] = 'eager'
    del data['meta']['runtime']
    path.write_text(json.dumps(data))
    assert LatencyTable.load(path, runtime='torch', **here).meta['runtime'] == 'torch'


def test_detector_runner_refuses_what_it_cannot_run():
    assert (DETECTOR_RUNTIMES, DEPLOYED_RUNTIMES) == (('torch', 'compile'), ('ort', 'trt'))
    with pytest.raises(ValueError, match=r"runtime 'cudagraph' cannot run a whole detector"):
        detector_runner(torch.nn.Identity(), 'cudagraph', 'cpu')
    with pytest.raises(ValueError, match=r"runtime 'ort' exports the detector first: give an "
                                         'example frame'):
        detector_runner(torch.nn.Identity(), 'ort', 'cpu')


@torch.no_grad()
def test_ort_runs_what_torch_computes():
    """What the ort runtime times is the module itself: the exported graph gives its outputs."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True).eval()
    x = torch.randn(2, 8, 12, 20)
    np.testing.assert_allclose(ort.bind(conv, (x,))()[0], conv(x).numpy(), rtol=1e-5, atol=1e-5)
    heads = _Heads(embed=32, heads=4, unit=8, out=32).eval()  # a head part of the tables
    q, k = torch.randn(1, 10, 32), torch.randn(1, 24, 32)
    np.testing.assert_allclose(ort.bind(heads, (q, k))()[0], heads(q, k).numpy(), rtol=1e-5,
                               atol=1e-5)
    assert Timer('cpu', mode='ort', repeats=2, warmup=1)(conv, x) > 0


def r18_config(folder, shape=SHAPE):
    config = folder / 'r18.py'
    config.write_text("default_scope = 'mmdet'\n"
                      "model = dict(type='ResNet', depth=18, out_indices=(2, 3))\n"
                      f'latency_input_shape = {tuple(shape)}\n')
    return config


def test_ort_table_records_its_runtime_and_validates(tmp_path):
    config = r18_config(tmp_path)
    out = tmp_path / 'table.json'
    args = [str(config), '--out', str(out), '--runtime', 'ort', '--step', '256', '--repeats', '2',
            '--warmup', '1', '--samples', '4', '--device', 'cpu']
    table = load_tool('profile_latency').main(args)
    assert table.complete and len(table.samples) == 5
    meta = table.meta
    assert (meta['runtime'], meta['onnxruntime'], meta['providers'], meta['intra_op_threads']) \
        == ('ort', onnxruntime.__version__, ['CPUExecutionProvider'], torch.get_num_threads())
    here = dict(device=device_name('cpu'), input_shape=SHAPE, dtype='fp32')
    assert LatencyTable.load(out, runtime='ort', **here).meta == meta
    with pytest.raises(TableMismatchError, match="runtime is 'ort' in the table but 'torch' here"):
        LatencyTable.load(out, runtime='torch', **here)

    validate = load_tool('validate_latency')
    report = validate.main([str(config), '--table', str(out), '-n', '3', '--runtime', 'ort',
                            '--out-dir', str(tmp_path / 'val'), '--repeats', '2', '--warmup',
                            '1', '--device', 'cpu'])
    assert report['table_meta']['runtime'] == 'ort'
    assert set(report['models']) == {'lut_bilinear', 'lut_linear', 'lut_sum', 'flops',
                                     'measured'}
    assert all(np.isfinite(r['mape']) and s['measured_ms'] > 0
               for r, s in zip(report['models'].values(), report['samples']))
    with pytest.raises(TableMismatchError, match="runtime is 'ort' in the table but 'torch'"):
        validate.main([str(config), '--table', str(out), '-n', '2', '--device', 'cpu'])

    # Resuming a table of another onnxruntime is refused, by field.
    data = json.loads(out.read_text())
    data['meta']['onnxruntime'] = '0.1'
    data['samples'] = data['samples'][:2]
    out.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"onnxruntime is '0.1' in the table but "
                                         f"'{onnxruntime.__version__}' here"):
        load_tool('profile_latency').main(args)


# No map of one pixel (dynamo gives a size of 1 its own graph): layer4 runs at 2 x 3.
COMPILE_SHAPE = (1, 3, 64, 96)


@torch.no_grad()
def test_compiled_convs_share_two_graphs_and_compute_what_eager_does():
    """The compile runtime's table convs: every width pair of the grid in one dynamic graph per
    kernel size class (1x1, larger), the outputs eager's; a whole module compiled as well."""
    torch.manual_seed(0)
    backbone = ResNet(depth=18, out_indices=(2, 3))
    backbone.eval()  # mmdet's ResNet.train returns None: no chaining
    structure = derive_structure(backbone, COMPILE_SHAPE)
    table = LatencyTable.new(structure, make_meta('cpu', 'fp32', COMPILE_SHAPE, 128, 'compile',
                                                  1, 0))
    torch._dynamo.reset()  # no graph of an earlier test in this process
    graphs = counters['stats']['unique_graphs']
    profile_layers(table, Timer('cpu', mode='compile', repeats=1, warmup=0), torch.float32)
    # 20 convs, 90 width pairs, four kinds (7x7 / 3x3 stride 1 and 2 / 1x1 stride 2): 2 graphs.
    assert counters['stats']['unique_graphs'] - graphs == 2
    entries = np.concatenate([np.ravel(v) for v in table.tables.values()])
    assert table.complete and len(entries) == 90 and np.isfinite(entries).all() and \
        (entries > 0).all()
    for conv in (backbone.conv1, backbone.layer2[0].conv1, backbone.layer2[0].downsample[0],
                 torch.nn.Conv2d(3, 8, 3, padding=2, dilation=2, bias=True).eval()):
        x = torch.randn(1, conv.in_channels, 16, 24)
        torch.testing.assert_close(compiled.bind(conv, (x,))(), conv(x), rtol=1e-5, atol=1e-5)
    x = torch.randn(COMPILE_SHAPE)
    for ours, eager in zip(compiled.bind(backbone, (x,))(), backbone(x)):
        torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5)


def test_compile_table_records_its_runtime_and_validates(tmp_path, capsys):
    config = r18_config(tmp_path, COMPILE_SHAPE)
    out = tmp_path / 'table.json'
    table = load_tool('profile_latency').main([
        str(config), '--out', str(out), '--runtime', 'compile', '--step', '256', '--repeats',
        '2', '--warmup', '1', '--samples', '3', '--device', 'cpu'])
    assert table.complete and table.meta['runtime'] == 'compile' and len(table.samples) == 4
    assert all(s['ms'] > 0 for s in table.samples)
    here = dict(device=device_name('cpu'), input_shape=COMPILE_SHAPE, dtype='fp32')
    assert LatencyTable.load(out, runtime='compile', **here).meta == table.meta
    with pytest.raises(TableMismatchError, match="runtime is 'compile' in the table but "
                                                 "'torch' here"):
        LatencyTable.load(out, runtime='torch', **here)

    validate = load_tool('validate_latency')
    report = validate.main([str(config), '--table', str(out), '-n', '2', '--runtime', 'compile',
                            '--out-dir', str(tmp_path / 'val'), '--repeats', '2', '--warmup',
                            '1', '--device', 'cpu'])
    assert report['table_meta']['runtime'] == 'compile'
    assert all(s['measured_ms'] > 0 for s in report['samples'])
    assert all(np.isfinite(r['mape']) for r in report['models'].values())
    with pytest.raises(TableMismatchError, match="runtime is 'compile' in the table but 'torch'"):
        validate.main([str(config), '--table', str(out), '-n', '2', '--device', 'cpu'])
    # A whole-detector table stays in torch: the compile runtime's head runs eager.
    assert run_tool(load_tool('profile_latency').main, [
        os.path.join(ROOT, 'configs', 'streampetr_mdp45_whole_small_cpu.py'), '--runtime',
        'compile', '--out', str(tmp_path / 'whole.json')]) == 2
    assert "--runtime compile times a backbone table" in capsys.readouterr().err


def test_benchmark_in_ort_times_the_exported_graphs(tmp_path):
    out = tmp_path / 'bench.json'
    assert load_tool('benchmark').main([SMALL, '--runtime', 'ort', '--fake-data', '--samples',
                                        '2', '--warmup', '1', '--device', 'cpu', '--out',
                                        str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result['runtime'], result['frames'], result['onnxruntime']) == (
        'ort', 2, onnxruntime.__version__)
    assert set(result['breakdown_ms']) == {'backbone_neck', 'head', 'other'}
    assert min(result['breakdown_ms']['backbone_neck'], result['breakdown_ms']['head']) > 0


@pytest.mark.skipif(importlib.util.find_spec('tensorrt') is not None,
                    reason='tensorrt is installed here')
@pytest.mark.parametrize('tool,argv', [
    ('profile_latency', ['--out', 'unused.json']), ('validate_latency', ['--table', 'none.json']),
    ('benchmark', ['--fake-data'])])
def test_trt_without_tensorrt_fails_at_once(tool, argv, capsys):
    assert run_tool(load_tool(tool).main, [SMALL, '--runtime', 'trt', *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runtime trt: tensorrt does not import here") and \
        err.count('\n') == 1
    with pytest.raises(ValueError, match='--runtime trt: tensorrt does not import here'):
        Timer('cpu', mode='trt')
