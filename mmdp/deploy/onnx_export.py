"""Export of a StreamPETR detector to its two ONNX graphs, and ONNX Runtime running them over
a sequence with the detector's own host code (frame geometry, memory start, decoding)."""
import copy
import os
import os.path as osp
import shutil
import tempfile

import numpy as np
import torch

from .graphs import FRAME_INPUTS, BackboneNeck, HeadStep, head_inputs

BACKBONE, HEAD = 'backbone_neck.onnx', 'head.onnx'
OPSET = 17


def _names(head):
    inputs = ['feats', *FRAME_INPUTS, *head.MEMORY]
    outputs = ['cls_scores', 'bbox_preds', *(f'next_{m}' for m in head.MEMORY)]
    return inputs, outputs


@torch.no_grad()
def export_onnx(model, data, out_dir: str, fp16: bool = False) -> dict:
    """Write `out_dir/backbone_neck.onnx` (fp16 weights and input with `fp16`) and
    `out_dir/head.onnx` (fp32, as deployed) traced on one preprocessed frame `data`; returns
    their paths. Written in a temporary folder first: a failed export leaves nothing."""
    model = copy.deepcopy(model).cpu().eval()
    model.reset_memory()
    imgs = data['inputs']['imgs'].cpu()
    frame = model._frame(imgs, data['data_samples'])
    head = model.pts_bbox_head
    feats = model.extract_feat(imgs)
    memory, frame = head.memory_to_step_from(None, frame, imgs.size(0), imgs.device)
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir, prefix='.export')
    try:
        backbone = BackboneNeck(model.half() if fp16 else model)
        torch.onnx.export(backbone, (imgs.half() if fp16 else imgs, ), osp.join(tmp, BACKBONE),
                          input_names=['imgs'], output_names=['feats'], opset_version=OPSET,
                          dynamo=False)
        model.float()
        inputs, outputs = _names(head)
        torch.onnx.export(HeadStep(head, frame['pad_shape']),
                          (feats, *head_inputs(frame, memory, head)), osp.join(tmp, HEAD),
                          input_names=inputs, output_names=outputs, opset_version=OPSET,
                          dynamo=False)
        paths = {}
        for name in (BACKBONE, HEAD):
            os.replace(osp.join(tmp, name), osp.join(out_dir, name))
            paths[name] = osp.join(out_dir, name)
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OrtStreamPETR:
    """The exported graphs in ONNX Runtime, fed frame by frame like the detector: `model` is the
    PyTorch detector the graphs came from, whose host code runs on a copy (its frame
    bookkeeping must not be shared with the detector itself). `open_session(path)` opens each
    graph (default: an onnxruntime session on `providers`); anything with the session's `run`
    and `get_inputs` will do (a TensorRT engine, mmdp.runtime.trt.Engine)."""

    def __init__(self, model, onnx_dir: str, providers=('CPUExecutionProvider', ),
                 open_session=None):
        if open_session is None:
            import onnxruntime as ort
            opts = ort.SessionOptions()

            def open_session(path):
                return ort.InferenceSession(path, opts, providers=list(providers))
        self.model = copy.deepcopy(model).cpu().eval()
        self.head = self.model.pts_bbox_head
        self.backbone = open_session(osp.join(onnx_dir, BACKBONE))
        self.head_graph = open_session(osp.join(onnx_dir, HEAD))
        self.input_dtype = np.float16 if self.backbone.get_inputs()[0].type == \
            'tensor(float16)' else np.float32
        self.names = _names(self.head)
        self.reset()

    def reset(self):
        self.memory = None
        self.model.reset_memory()

    @torch.no_grad()
    def __call__(self, data):
        """One preprocessed frame -> (results as `head.decode` gives them, last-layer logits,
        box codes)."""
        imgs = data['inputs']['imgs'].cpu()
        frame = self.model._frame(imgs, data['data_samples'])
        feats = self.backbone.run(None, {'imgs': imgs.numpy().astype(self.input_dtype)})[0]
        feats = torch.from_numpy(feats.astype(np.float32))
        memory, frame = self.head.memory_to_step_from(self.memory, frame, feats.size(0), 'cpu')
        args = (feats, *head_inputs(frame, memory, self.head))
        outs = self.head_graph.run(None, {n: a.cpu().numpy() for n, a in
                                          zip(self.names[0], args)})
        outs = [torch.from_numpy(o) for o in outs]
        self.memory = dict(zip(self.head.MEMORY, outs[2:]))
        return self.head.decode(outs[0], outs[1]), outs[0], outs[1]
