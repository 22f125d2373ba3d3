# Dense StreamPETR, ResNet-50, 704x256, 300 queries + 128 propagated: the model every pruned
# config inherits.
_base_ = [
    './_base_/models/streampetr_r50.py',
    './_base_/datasets/nus_stream_704.py',
    './_base_/schedules/streampetr_24e.py',
    './_base_/default_runtime.py',
]
