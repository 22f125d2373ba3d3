# StreamPETR, ResNet-50 + CPFPN (stride-16 level only) + temporal head, lightweight setting of the
# pruning paper: 300 queries + 128 propagated, memory 512, top-k 128.
position_range = [-61.2, -61.2, -10.0, 61.2, 61.2, 10.0]
num_classes = 10  # nuScenes detection classes

model = dict(
    type='StreamPETR',
    # The loader decodes BGR (mmcv); the published model normalises RGB (to_rgb=True).
    data_preprocessor=dict(
        type='Det3DDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    grid_mask=dict(prob=0.7),
    img_backbone=dict(
        type='mmdet.ResNet',
        depth=50,
        num_stages=4,
        out_indices=(2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN2d', requires_grad=False),
        norm_eval=True,
        with_cp=False,  # True (as published) saves activation memory at some speed
        # BN is frozen: zero-initialised last norms would keep random-init residual branches dead.
        zero_init_residual=False,
        style='pytorch'),
    img_neck=dict(type='StreamCPFPN', in_channels=[1024, 2048], out_channels=256, out_levels=(0, )),
    img_roi_head=dict(type='StreamFocalHead', num_classes=num_classes, in_channels=256),
    pts_bbox_head=dict(
        type='StreamPETRHead',
        num_classes=num_classes,
        in_channels=256,
        embed_dims=256,
        num_query=300,
        num_propagated=128,
        memory_len=512,
        topk_proposals=128,
        depth_num=64,
        position_range=position_range,
        pc_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],
        with_dn=True,
        dn_groups=10,
        dn_noise_scale=1.0,
        dn_split=0.75,
        code_weights=[2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        # The published weights read view j mod N's focal lengths at image token j (an
        # official indexing bug they were trained with): keep False for them.
        per_view_intrinsics=False,
        decoder=dict(type='StreamTemporalDecoder', num_layers=6, embed_dims=256, num_heads=8,
                     ffn_dims=2048, dropout=0.1, cross_attn_drop=0.0, with_cp=False),
        bbox_coder=dict(type='StreamNMSFreeCoder', post_center_range=position_range,
                        max_num=300)))
