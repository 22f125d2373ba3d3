import json
import os

import numpy as np
import pytest
import torch
from mmdet.models.backbones import ResNet

from mmdp.latency import (LATENCY_MODELS, TERMS, BilinearLutLatency, FlopsLatency,
                          LatencyTable, LinearLutLatency, MeasuredLatency, TableMismatchError,
                          Timer, device_name, fit_overheads, make_meta, sample_choices)
from mmdp.solvers.problem import Problem
from mmdp.structure import StructureChoice, derive_structure
from tool_loader import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (1, 3, 32, 64)
STEP = 64
FITS = {'scale': 1.3, 'per_block': 0.05, 'per_element': 2e-6, 'constant': 0.4}


def formula(layer, w_out, w_in):
    """A conv cost that is linear in each width, so linear interpolation reproduces it."""
    a = 1e-5 * (1 + len(layer.name) % 3)
    return a * w_out * w_in + 1e-3 * w_out + 0.01


@pytest.fixture(scope='module')
def r18():
    model = ResNet(depth=18, out_indices=(2, 3))
    model.eval()
    return model


@pytest.fixture(scope='module')
def structure(r18):
    return derive_structure(r18, SHAPE)


@pytest.fixture
def table(structure):
    meta = make_meta('cpu', 'fp32', SHAPE, STEP, 'torch', repeats=3, warmup=1)
    t = LatencyTable.new(structure, meta)
    for layer in structure.layers:
        ins = t.widths[layer.input_group] if layer.input_group else [layer.in_channels]
        rows = [[formula(layer, o, i) for i in ins] for o in t.widths[layer.group]]
        t.tables[layer.name] = rows if layer.input_group else [r[0] for r in rows]
    t.dense_ms = 5.0
    t.fits = {'lut_bilinear': dict(FITS), 'lut_linear': dict(FITS, scale=0.9)}
    return t


def test_width_grid_and_interpolation(table, structure):
    assert table.widths['layer4.residual'] == [64, 128, 192, 256, 320, 384, 448, 512]
    layer = structure.layer('layer4.0.conv2')  # out: layer4.residual, in: layer4.0.conv1
    got = table.conv_ms(layer, [100, 512], [64, 333])
    want = [[formula(layer, o, i) for i in (64, 333)] for o in (100, 512)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    stem = structure.layer('conv1')
    np.testing.assert_allclose(table.conv_ms(stem, [64]), [formula(stem, 64, 3)])
    with pytest.raises(ValueError, match=r'layer4.0.conv2 input: width 32 lies outside the '
                       r'profiled widths 64..512'):
        table.conv_ms(layer, [64], [32])


def test_table_file_round_trip_and_metadata_checks(table, tmp_path):
    path = tmp_path / 'table.json'
    table.save(path)
    assert os.listdir(tmp_path) == ['table.json']  # nothing half-written left over
    here = dict(device=device_name('cpu'), input_shape=SHAPE, runtime='torch', dtype='fp32')
    loaded = LatencyTable.load(path, **here)
    assert loaded.tables == json.loads(json.dumps(table.tables))
    assert loaded.structure == table.structure
    assert loaded.meta['cudnn'] is None and loaded.meta['batch'] == 1
    for field, value, ours in (('device', 'NVIDIA H100 80GB HBM3', device_name('cpu')),
                               ('input_shape', (6, 3, 256, 704), [1, 3, 32, 64]),
                               ('runtime', 'cudagraph', 'torch'), ('dtype', 'fp16', 'fp32')):
        with pytest.raises(TableMismatchError) as err:
            LatencyTable.load(path, **{**here, field: value})
        message = str(err.value)
        assert field in message and repr(ours) in message
        assert repr(list(value) if field == 'input_shape' else value) in message
    with pytest.raises(TableMismatchError, match='runtime'):
        BilinearLutLatency(str(path), expect={'runtime': 'cudagraph'})


def test_table_must_match_the_model(table):
    other = derive_structure(ResNet(depth=18, out_indices=(2, 3)), (1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"layer 'conv1': input_shape is \(1, 3, 32, 64\) in "
                       r'the latency table but \(1, 3, 64, 64\) in the model'):
        table.check_structure(other)


@pytest.mark.parametrize('name', ['lut_bilinear', 'lut_linear', 'flops'])
def test_folded_problem_equals_prediction(table, structure, name):
    model = LATENCY_MODELS.build(dict(type=name, table=table))
    problem = Problem.from_dict(model.to_problem(
        structure, importance=lambda layer, widths: [w / 64 for w in widths],
        budget_ratio=0.6, chunk=STEP))
    dense = model.predict(StructureChoice())
    assert problem.budget == pytest.approx(0.6 * dense)
    assert problem.dense_latency() == pytest.approx(dense, rel=1e-12)
    for choice in sample_choices(structure, table.widths, 6, seed=0, removal=0.3):
        _, latency = problem.evaluate(choice.all_widths(structure), choice.removed_blocks)
        assert latency == pytest.approx(model.predict(choice), rel=1e-12)


def test_fitted_terms_are_linear_and_fold_exactly(table, structure):
    model = BilinearLutLatency(table)
    raw = BilinearLutLatency(table, fitted=False)
    for choice in sample_choices(structure, table.widths, 5, seed=3):
        coef = np.array([FITS[k] for k in TERMS])
        assert model.predict(choice) == pytest.approx(coef @ raw.terms(choice), rel=1e-12)
        assert raw.predict(choice) == pytest.approx(raw.terms(choice)[0], rel=1e-12)


def test_linear_lut_freezes_input_widths(table, structure):
    model = LinearLutLatency(table, input_widths={'layer4.0.conv1': 128})
    layer = structure.layer('layer4.0.conv2')
    costs = model.layer_costs(layer, [64, 512], [64, 256, 512])
    assert np.all(costs == costs[:, :1])
    want = 0.9 * formula(layer, 512, 128) + FITS['per_element'] * 512 * 1 * 1 * 2 + \
        FITS['per_block'] / 2
    assert costs[1, 0] == pytest.approx(want)


def test_flops_model_scales_dense_to_measured(table):
    model = FlopsLatency(table)
    assert model.predict(StructureChoice()) == pytest.approx(table.dense_ms)
    half = StructureChoice({g: w // 2 for g, w in table.structure.groups.items()})
    assert model.predict(half) < 0.5 * table.dense_ms


def test_fit_recovers_known_overheads(table, structure):
    raw = BilinearLutLatency(table, fitted=False)
    coef = np.array([1.2, 0.03, 1e-6, 0.7])
    samples = []
    for choice in [StructureChoice()] + sample_choices(structure, table.widths, 12, seed=5):
        samples.append({'widths': choice.all_widths(structure),
                        'removed_blocks': sorted(choice.removed_blocks),
                        'ms': float(coef @ raw.terms(choice))})
    fit = fit_overheads(raw, samples)
    np.testing.assert_allclose([fit[k] for k in TERMS], coef, rtol=1e-6)
    with pytest.raises(ValueError, match='cannot fit'):
        fit_overheads(raw, samples[:3])


def test_unfitted_table_is_refused_for_fitted_models(table):
    table.fits = {}
    with pytest.raises(ValueError, match="no fitted overheads for 'lut_bilinear'"):
        BilinearLutLatency(table)


def test_timer_modes():
    with pytest.raises(ValueError, match="mode 'cudagraph' needs a CUDA device"):
        Timer('cpu', mode='cudagraph')
    with pytest.raises(ValueError, match='mode must be one of'):
        Timer('cpu', mode='inductor')
    conv = torch.nn.Conv2d(4, 4, 3)
    assert Timer('cpu', repeats=3, warmup=1)(conv, torch.randn(1, 4, 8, 8)) > 0


def test_measured_model_times_the_smaller_network(r18, structure):
    model = MeasuredLatency(r18, structure=structure, repeats=2, warmup=1)
    choice = StructureChoice({'layer4.residual': 64}, ['layer3.1'])
    net = model.build(choice)
    assert net.layer4[1].conv2.out_channels == 64
    assert model.predict(choice) > 0


def test_profile_resume_and_validate_tools(tmp_path):
    config = tmp_path / 'r18.py'
    config.write_text("default_scope = 'mmdet'\n"
                      "model = dict(type='ResNet', depth=18, out_indices=(2, 3))\n"
                      'latency_input_shape = (1, 3, 32, 64)\n')
    out = tmp_path / 'table.json'
    args = [str(config), '--out', str(out), '--step', '256', '--repeats', '2', '--warmup', '1',
            '--samples', '4', '--device', 'cpu']
    profile = load_tool('profile_latency')
    table = profile.main(args)
    assert table.complete and len(table.samples) == 5 and table.dense_ms > 0
    assert set(table.fits) == {'lut_bilinear', 'lut_linear'}
    assert table.widths['layer4.residual'] == [256, 512]

    # An interrupted run: two layers and the last timings missing; the rerun fills only those.
    data = json.loads(out.read_text())
    kept = {k: v for k, v in data['tables'].items() if k not in ('conv1', 'layer4.1.conv1')}
    data['tables'], data['samples'], data['fits'] = kept, data['samples'][:2], {}
    out.write_text(json.dumps(data))
    resumed = profile.main(args)
    for name, rows in kept.items():
        assert resumed.tables[name] == rows
    assert resumed.complete and resumed.samples[:2] == data['samples']
    assert len(resumed.samples) == 5 and resumed.fits

    with pytest.raises(ValueError, match=r"step is 256 in the table but 128 here"):
        profile.main(args[:4] + ['128'] + args[5:])

    report = load_tool('validate_latency').main(
        [str(config), '--table', str(out), '-n', '3', '--out-dir', str(tmp_path / 'val'),
         '--repeats', '2', '--warmup', '1', '--device', 'cpu'])
    assert set(report['models']) == {'lut_bilinear', 'lut_linear', 'lut_sum', 'flops',
                                     'measured'}
    assert all(np.isfinite(r['mape']) for r in report['models'].values())
    assert sorted(os.listdir(tmp_path / 'val')) == ['latency_validation.json',
                                                    'latency_validation.png']
    with pytest.raises(TableMismatchError, match='input_shape'):
        load_tool('validate_latency').main([str(config), '--table', str(out), '-n', '2',
                                            '--input-shape', '1', '3', '64', '64'])


def test_validate_latency_on_random_whole_detectors(tmp_path):
    """A whole-detector table is checked against whole pruned detectors timed end to end:
    every sampled structure builds and runs, head dimensions included."""
    config, shape = 'configs/streampetr_mdp45_whole_small_cpu.py', ['6', '3', '64', '128']
    table = str(tmp_path / 'whole.json')
    load_tool('profile_latency').main([config, '--out', table, '--step', '512', '--repeats', '1',
                                       '--warmup', '0', '--samples', '3', '--input-shape',
                                       *shape])
    report = load_tool('validate_latency').main([
        config, '--table', table, '-n', '4', '--repeats', '2', '--warmup', '1',
        '--input-shape', *shape, '--out-dir', str(tmp_path / 'validation')])
    assert set(report['models']) == {'lut_bilinear', 'lut_linear', 'lut_sum', 'flops'}
    head_groups = [g for g in report['samples'][0]['widths'] if g.startswith('pts_bbox_head')]
    assert head_groups and len(report['samples']) == 4
    assert all(s['measured_ms'] > 0 for s in report['samples'])
    with pytest.raises(ValueError, match='whole-detector table is validated in --runtime torch'):
        load_tool('validate_latency').main([config, '--table', table, '-n', '2', '--runtime',
                                            'ort', '--input-shape', *shape])
