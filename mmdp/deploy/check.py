"""Exported graphs against the PyTorch detector, frame by frame over a sequence."""
import torch

from mmdp.runtime.detector import preprocessed_frames

from .onnx_export import OrtStreamPETR


def sequence(model, img_size, count: int):
    """`count - 1` frames of one scene, then the first frame of another (a memory reset)."""
    frames = preprocessed_frames(model, img_size, count - 1, scene='a')
    return frames + preprocessed_frames(model, img_size, 1, start=count, scene='b')


@torch.no_grad()
def compare_with_torch(model, onnx_dir: str, frames, open_session=None) -> list:
    """Per frame: the largest absolute differences of the exported graphs' outputs from
    PyTorch's (last-layer logits and box codes, decoded boxes and scores), the graphs run in
    ONNX Runtime or what `open_session` opens them with (TensorRT engines)."""
    ort_model = OrtStreamPETR(model, onnx_dir, open_session=open_session)
    model.reset_memory()
    diffs = []
    for data in frames:
        cls, box = (x[-1] for x in model._forward(data['inputs'], data['data_samples']))
        ref = model.pts_bbox_head.decode(cls, box)
        res, cls_o, box_o = ort_model(data)
        boxes = max((a.bboxes_3d.tensor - b.bboxes_3d.tensor).abs().max().item()
                    for a, b in zip(ref, res))
        scores = max((a.scores_3d - b.scores_3d).abs().max().item() for a, b in zip(ref, res))
        labels = all(torch.equal(a.labels_3d, b.labels_3d) for a, b in zip(ref, res))
        diffs.append(dict(logits=(cls - cls_o).abs().max().item(),
                          box_codes=(box - box_o).abs().max().item(), boxes=boxes,
                          scores=scores, labels_differ=float(not labels)))
    model.reset_memory()
    return diffs
