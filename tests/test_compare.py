"""tools/compare_methods.py's valuation: the share of one reference saliency a final structure
keeps, on a hand-made structure with hand-computed values."""
import numpy as np
import pytest

from mmdp.report.compare import kept_importance
from mmdp.structure import Structure, StructureChoice
from mmdp.structure.derive import Block, ConvLayer


def conv(name, group, input_group, block, cin, cout):
    return ConvLayer(name, group, input_group, f'{name}.bn', block, cin, cout, (3, 3), (1, 1),
                     (1, 1), (1, 1), False, (1, cin, 8, 8), (1, cout, 8, 8))


@pytest.fixture
def structure():
    # stem (4 channels) -> block b: a (group g, 3 channels) -> c (back to the stem's group)
    layers = [conv('stem', 'stem', None, None, 3, 4), conv('a', 'g', 'stem', 'b', 4, 3),
              conv('c', 'stem', 'g', 'b', 3, 4)]
    return Structure(backbone='', input_shape=(1, 3, 8, 8), groups={'stem': 4, 'g': 3},
                     layers=layers, blocks=[Block('b', ('a', 'c'), ())], outputs=['stem'])


SALIENCY = {'stem': np.array([1.0, 2.0, 3.0, 4.0]), 'a': np.array([5.0, 0.5, 2.5]),
            'c': np.array([0.25, 0.25, 0.5, 1.0])}  # total 20


def test_kept_importance_counts_the_kept_units_of_every_layer(structure):
    assert kept_importance(structure, SALIENCY, StructureChoice()) == 1.0
    # g keeps channels 0 and 2: a keeps 5 + 2.5; the stem's group and c stay whole.
    choice = StructureChoice({'g': 2}, (), {'g': [0, 2]})
    assert kept_importance(structure, SALIENCY, choice) == pytest.approx((10 + 7.5 + 2) / 20)
    # Without named channels the first ones are kept.
    assert kept_importance(structure, SALIENCY, StructureChoice({'g': 1})) == \
        pytest.approx((10 + 5 + 2) / 20)


def test_a_removed_block_loses_everything_inside_it(structure):
    choice = StructureChoice({'g': 2}, ('b',), {'g': [0, 2]})
    assert kept_importance(structure, SALIENCY, choice) == pytest.approx(10 / 20)


def test_a_whole_detector_table_gives_the_backbone_table_of_the_same_timings(tmp_path):
    """compare_methods profiles once: its backbone-only methods price with the backbone part."""
    import subprocess
    import sys

    from mmdet3d.registry import MODELS
    from mmengine.registry import init_default_scope

    from mmdp.config_utils import load_config
    from mmdp.latency import BilinearLutLatency, LatencyTable
    from mmdp.structure import derive_structure

    shape = (6, 3, 64, 128)
    whole_path = str(tmp_path / 'whole.json')
    subprocess.run([sys.executable, 'tools/profile_latency.py',
                    'configs/streampetr_mdp45_whole_small_cpu.py', '--out', whole_path,
                    '--step', '512', '--repeats', '1', '--warmup', '0', '--samples', '3',
                    '--input-shape', *map(str, shape)], check=True, capture_output=True)
    whole = LatencyTable.load(whole_path)
    backbone = whole.backbone_only()
    backbone.save(str(tmp_path / 'backbone.json'))
    cfg = load_config('configs/streampetr_r50_small_cpu.py')
    init_default_scope('mmdet3d')
    structure = derive_structure(MODELS.build(cfg.model), shape)
    LatencyTable.load(str(tmp_path / 'backbone.json')).check_structure(structure)
    assert not backbone.structure.parts and whole.structure.parts
    assert backbone.structure.groups == structure.groups
    assert [b.name for b in backbone.structure.blocks] == [b.name for b in structure.blocks]
    dense = StructureChoice()
    ms_backbone = BilinearLutLatency(backbone, fitted=False).predict(dense)
    full = whole.structure.groups
    ms_parts = sum(float(np.ravel(whole.conv_ms(
        p, [full[p.group]], [full[p.input_group]] if p.input_group else None))[0])
        for p in whole.structure.parts)
    assert BilinearLutLatency(whole, fitted=False).predict(dense) == pytest.approx(
        ms_backbone + ms_parts)


def test_a_failing_step_names_the_tool_error(capsys):
    from mmdp.cli import RunError
    from mmdp.steps import run_step
    with pytest.raises(RunError, match=r'^bad budget failed \(exit 2\): error: --budget must lie '
                                       r'in \(0, 1\), got 2.0$'):
        run_step('test', 'bad budget', ['tools/compare_methods.py', '--budget', '2', '--out',
                                        'unused'])
    assert '[test] bad budget: python tools/compare_methods.py' in capsys.readouterr().out


@pytest.mark.parametrize('with_head, height', [(False, 440), (True, 880)])
def test_widths_figure_draws_the_head_in_a_panel_of_its_own(tmp_path, with_head, height):
    import matplotlib.image as mpimg

    from mmdp.report.figures import widths_figure
    groups = {'img_backbone.conv1': {'before': 64, 'after': 32},
              'img_backbone.layer1.0.conv1': {'before': 64, 'after': 64}}
    if with_head:
        groups.update({'pts_bbox_head.decoder.layers.0.ffn.hidden': {'before': 512, 'after': 256},
                       'pts_bbox_head.decoder.layers.1.ffn.hidden': {'before': 512, 'after': 512},
                       'pts_bbox_head.tokens': {'before': 300, 'after': 200}})
    removed = ['pts_bbox_head.decoder.layers.1'] if with_head else []
    path = str(tmp_path / 'widths.png')
    widths_figure({'groups': groups, 'removed_blocks': removed}, 'run', path)
    # 4 inches a panel at 110 dpi: one panel for the convs, a second one for the head.
    assert mpimg.imread(path).shape[0] == height
