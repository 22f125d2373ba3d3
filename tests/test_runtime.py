"""One notion of runtime: the latency tools' --runtime (and the former --mode), the table field
that records it, tables written before it."""
import argparse
import json

import pytest
import torch
from mmdet.models.backbones import ResNet

from mmdp.latency import LatencyTable, TableMismatchError, device_name, make_meta
from mmdp.runtime.runtimes import (DETECTOR_RUNTIMES, TABLE_RUNTIMES, add_runtime_argument,
                                   detector_runner, resolve_runtime)
from mmdp.structure import derive_structure

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
    for argv in (('--runtime', 'ort'), ('--runtime', 'torch', '--mode', 'eager')):
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
    with pytest.raises(ValueError, match=r"profiled in one of \('torch', 'cudagraph'\), found "
                                         "runtime 'eager'"):
        make_meta('cpu', 'fp32', SHAPE, 64, 'eager', 1, 0)
    # A table written with the former `mode` field reads as its runtime.
    data = json.loads(path.read_text())
    data['meta']['mode'] = 'eager'
    del data['meta']['runtime']
    path.write_text(json.dumps(data))
    assert LatencyTable.load(path, runtime='torch', **here).meta['runtime'] == 'torch'


def test_detector_runner_refuses_what_it_cannot_run():
    assert DETECTOR_RUNTIMES == ('torch', 'compile')
    with pytest.raises(ValueError, match=r"runtime 'ort' cannot run a whole detector here"):
        detector_runner(torch.nn.Identity(), 'ort', 'cpu')
