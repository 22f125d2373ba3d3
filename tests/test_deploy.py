"""Deployment graphs: the head's stateless step is what its forward runs; tools/deploy.py
exports dense and exported pruned models whose ONNX Runtime boxes and scores equal PyTorch's
within 1e-4 over three frames with a scene reset; bad usage is refused."""
import importlib.util
import json
import os.path as osp

import pytest
import torch

from mmdp.runtime.detector import build_detector, preprocessed_frames
from tests.test_export import exported, masked  # noqa: F401  (fixtures: a pruned model)

SMALL = 'configs/streampetr_r50_small_cpu.py'


def deploy_tool():
    spec = importlib.util.spec_from_file_location('deploy_tool', 'tools/deploy.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_step_is_stateless_and_is_what_forward_runs():
    torch.manual_seed(0)
    model, cfg = build_detector(SMALL)
    head = model.pts_bbox_head
    frames = preprocessed_frames(model, cfg.img_size, 2)
    with torch.no_grad():
        outs = [model._forward(f['inputs'], f['data_samples']) for f in frames]
        model.reset_memory()
        memory = None
        for f, (cls, box) in zip(frames, outs):
            imgs = f['inputs']['imgs']
            feats = model.extract_feat(imgs)
            memory, frame = head.memory_to_step_from(memory, model._frame(imgs,
                                                     f['data_samples']), 1, 'cpu')
            given, before = memory, {k: v.clone() for k, v in memory.items()}
            cls_s, box_s, _, memory = head.step(feats, frame, given)
            assert all(torch.equal(before[k], given[k]) for k in head.MEMORY)  # not in place
            torch.testing.assert_close(cls_s, cls, rtol=0, atol=0)
            torch.testing.assert_close(box_s, box, rtol=0, atol=0)
    assert head.memory_embedding is None  # step never touched the module's own queue
    # The second frame continued the first: its queue starts with the first frame's top-k.
    assert memory['memory_embedding'][:, head.topk_proposals:].abs().sum() > 0


def check_tool(config, checkpoint, out):
    assert deploy_tool().main([config, checkpoint, '--out', out]) == 0
    with open(osp.join(out, 'deploy.json')) as f:
        result = json.load(f)
    assert result['agree'] and len(result['ort_vs_torch']) == 3
    for key in ('boxes', 'scores', 'logits', 'box_codes', 'labels_differ'):
        assert result['worst'][key] <= 1e-4, (key, result['worst'])
    assert osp.getsize(osp.join(out, 'head.onnx')) > 0
    if torch.cuda.is_available() and importlib.util.find_spec('tensorrt'):
        assert set(result['tensorrt']) == {'status', 'fp32', 'fp16'}
        assert all(result['tensorrt'][p]['agree'] for p in ('fp32', 'fp16'))
    else:  # the TensorRT step says why it is skipped
        assert result['tensorrt']['status'].startswith('skipped: ')
    return result


def test_dense_model_in_onnx_runtime_equals_pytorch(tmp_path):
    torch.manual_seed(0)
    model, _ = build_detector(SMALL)
    ckpt = str(tmp_path / 'dense.pth')
    torch.save({'meta': {}, 'state_dict': model.state_dict()}, ckpt)
    check_tool(SMALL, ckpt, str(tmp_path / 'onnx'))


def test_exported_pruned_model_in_onnx_runtime_equals_pytorch(exported, tmp_path):  # noqa: F811
    check_tool(exported['config'], exported['weights'], str(tmp_path / 'onnx'))


def test_bad_usage(tmp_path, capsys):
    tool = deploy_tool()
    for argv, message in (([SMALL, 'missing.pth'], 'missing.pth does not exist'),
                          ([SMALL, 'none', '--frames', '2'], '--frames must be >= 3')):
        with pytest.raises(SystemExit) as err:
            tool.main(argv + ['--out', str(tmp_path / 'out')])
        assert err.value.code == 2 and message in capsys.readouterr().err
    assert not osp.exists(tmp_path / 'out')
