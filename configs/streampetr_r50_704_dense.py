# Dense StreamPETR, ResNet-50, 704x256, 300 queries + 128 propagated: StreamPETR's 428q_nui_60e
# recipe in fp32, the model every pruned config inherits. The same with fp16 and activation
# checkpointing, as published: streampetr_r50_cpfpn_8xb2-amp-60e_nus-3d-704x256.py (24 epochs:
# streampetr_r50_cpfpn_8xb2-amp-24e_nus-3d-704x256.py).
_base_ = [
    './_base_/models/streampetr_r50.py',
    './_base_/datasets/nus_stream_704.py',
    './_base_/schedules/streampetr_60e.py',
    './_base_/default_runtime.py',
]
