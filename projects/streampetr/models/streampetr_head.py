"""StreamPETR's 3D head: 3D position embedding, temporal memory queue, query denoising, decoder,
Hungarian losses and NMS-free decoding."""
import torch
from mmdet.models.layers.transformer.utils import inverse_sigmoid
from mmdet.utils import reduce_mean
from mmdet3d.registry import MODELS, TASK_UTILS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.model import BaseModule, bias_init_with_prob
from mmengine.structures import InstanceData
from torch import nn

from .box_codec import normalize_bbox
from .embeddings import (MLN, SELayerLinear, nerf_positional_encoding, pos2posemb,
                         pos2posemb3d, transform_points)


def _mlp_branch(embed_dims, out_dims, num_fcs, with_ln):
    layers = []
    for _ in range(num_fcs):
        layers.append(nn.Linear(embed_dims, embed_dims))
        if with_ln:
            layers.append(nn.LayerNorm(embed_dims))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(embed_dims, out_dims))
    return nn.Sequential(*layers)


@MODELS.register_module()
class StreamPETRHead(BaseModule):
    """Object-centric temporal head. The memory queue holds, per batch slot, the top-k queries of
    past frames (features, reference points in the current LiDAR frame, age, relative pose,
    velocity); `frame['valid']` says for each slot whether the previous frame continues.

    `per_view_intrinsics=False` reproduces the published model, in which the spatial alignment
    of image token j (tokens flattened view-major, N views) reads the focal lengths of view
    j mod N (`intrinsic.repeat(1, H*W, 1)` in the official head), not those of its own view;
    the published weights were trained with it. True gives each token its own view's.
    `cone_depth_bins`: the two depth bins whose ray points enter the spatial alignment; None
    means the official ones, the last bin and the one 29 before it (63 and 34 of 64).
    `token_settings`: the (num_query, num_propagated, memory_len) a whole-detector pruning run
    may choose from (the dense one is added; mmdp/structure/head.py); None: token counts are
    not pruned. `use_tokens` runs the head at a setting with its dense parameters (the masked
    model), `prune_tokens` slices it to one (the exported model)."""

    def __init__(self,
                 num_classes=10,
                 in_channels=256,
                 embed_dims=256,
                 num_query=300,
                 num_propagated=128,
                 memory_len=512,
                 topk_proposals=128,
                 num_reg_fcs=2,
                 depth_num=64,
                 depth_start=1.0,
                 position_range=(-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
                 pc_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
                 with_dn=True,
                 dn_groups=10,
                 dn_noise_scale=1.0,
                 dn_split=0.75,
                 dn_weight=1.0,
                 code_weights=(2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
                 per_view_intrinsics=False,
                 cone_depth_bins=None,
                 token_settings=None,
                 decoder=dict(type='StreamTemporalDecoder'),
                 assigner=dict(type='StreamHungarianAssigner3D'),
                 bbox_coder=dict(type='StreamNMSFreeCoder',
                                 post_center_range=(-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)),
                 loss_cls=dict(type='StreamFocalLoss', gamma=2.0, alpha=0.25, loss_weight=2.0),
                 loss_bbox=dict(type='mmdet.L1Loss', loss_weight=0.25),
                 init_cfg=None):
        super().__init__(init_cfg)
        if num_propagated > memory_len or topk_proposals > memory_len:
            raise ValueError(f'num_propagated ({num_propagated}) and topk_proposals '
                             f'({topk_proposals}) must not exceed memory_len ({memory_len})')
        self.num_classes, self.embed_dims = num_classes, embed_dims
        self.num_query, self.num_propagated = num_query, num_propagated
        self.memory_len, self.topk_proposals = memory_len, topk_proposals
        self.query_index = None  # the learnable queries in use (None: all, in order)
        self.token_settings = None if token_settings is None else self._check_token_settings(
            token_settings)
        self.depth_num, self.depth_start = depth_num, depth_start
        self.per_view_intrinsics = per_view_intrinsics
        if cone_depth_bins is None:
            cone_depth_bins = (depth_num - 1, max(depth_num - 30, 0))
        if not all(0 <= b < depth_num for b in cone_depth_bins) or len(cone_depth_bins) != 2:
            raise ValueError(f'cone_depth_bins {cone_depth_bins} must be two bins in '
                             f'[0, {depth_num})')
        self.cone_depth_bins = tuple(cone_depth_bins)
        self.with_dn, self.dn_groups = with_dn, dn_groups
        self.dn_noise_scale, self.dn_split, self.dn_weight = dn_noise_scale, dn_split, dn_weight
        self.register_buffer('position_range', torch.tensor(position_range), persistent=False)
        self.register_buffer('pc_range', torch.tensor(pc_range), persistent=False)
        self.register_buffer('code_weights', torch.tensor(code_weights), persistent=False)
        # Linear-increasing depth bins (LID), denser near the camera; float32 arithmetic as in
        # the published head, so the bins are the same to the last bit.
        index = torch.arange(depth_num, dtype=torch.float32)
        bin_size = (self.position_range[3] - depth_start) / (depth_num * (1 + depth_num))
        self.register_buffer('coords_d', depth_start + bin_size * index * (index + 1),
                             persistent=False)
        self.decoder = MODELS.build(decoder)
        self.num_layers = len(self.decoder.layers)
        self.assigner = TASK_UTILS.build(assigner)
        bbox_coder = dict(bbox_coder, num_classes=num_classes)
        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        self._init_layers(num_reg_fcs, in_channels)
        self.reset_memory()

    def _check_token_settings(self, settings) -> tuple:
        dense = (self.num_query, self.num_propagated, self.memory_len)
        out = {dense}
        for s in settings:
            s = tuple(int(c) for c in (s.values() if isinstance(s, dict) else s))
            if (len(s) != 3 or not 1 <= s[0] <= dense[0] or not 0 <= s[1] <= dense[1]
                    or not max(s[1], self.topk_proposals) <= s[2] <= dense[2]):
                raise ValueError(
                    f'token_settings: {s} is not (num_query, num_propagated, memory_len) with '
                    f'1 <= num_query <= {dense[0]}, 0 <= num_propagated <= {dense[1]} and '
                    f'max(num_propagated, topk_proposals={self.topk_proposals}) <= memory_len '
                    f'<= {dense[2]}')
            out.add(s)
        queries = sorted(s[0] for s in out)
        if len(set(queries)) != len(queries):
            raise ValueError(f'token_settings: two settings have the same num_query '
                             f'({sorted(out)}); a setting is named by its learnable queries')
        return tuple(sorted(out))

    def use_tokens(self, queries=None, num_propagated=None, memory_len=None) -> tuple:
        """Run with the learnable queries `queries` (indices of `reference_points`; None: all)
        and the given counts (None: as built), keeping every parameter; the memory restarts.
        Returns the previous (queries, num_query, num_propagated, memory_len), which
        `restore_tokens` takes."""
        previous = (self.query_index, self.num_query, self.num_propagated, self.memory_len)
        full = self.reference_points.num_embeddings
        self.query_index = None if queries is None else torch.as_tensor(
            list(queries), dtype=torch.long, device=self.reference_points.weight.device)
        self.num_query = full if queries is None else len(self.query_index)
        self.num_propagated = (self.num_propagated if num_propagated is None
                               else int(num_propagated))
        self.memory_len = self.memory_len if memory_len is None else int(memory_len)
        self.reset_memory()
        return previous

    def restore_tokens(self, previous: tuple) -> None:
        self.query_index, self.num_query, self.num_propagated, self.memory_len = previous
        self.reset_memory()

    def prune_tokens(self, queries, num_propagated: int, memory_len: int) -> None:
        """Keep only the learnable queries `queries` and the first `num_propagated` pseudo
        points, and run with `memory_len` slots (the exported head)."""
        idx = torch.as_tensor(list(queries), dtype=torch.long)
        weight = self.reference_points.weight
        self.reference_points = nn.Embedding.from_pretrained(
            weight.detach()[idx.to(weight.device)].clone(), freeze=not weight.requires_grad)
        if num_propagated > 0:
            pseudo = self.pseudo_reference_points.weight.detach()[:num_propagated].clone()
            self.pseudo_reference_points = nn.Embedding.from_pretrained(pseudo, freeze=True)
        elif self.num_propagated > 0:
            del self.pseudo_reference_points
        self.num_query, self.num_propagated = len(idx), int(num_propagated)
        self.memory_len, self.query_index, self.token_settings = int(memory_len), None, None
        self.reset_memory()

    def learnable_reference_points(self):
        weight = self.reference_points.weight
        return weight if self.query_index is None else weight[self.query_index]

    def _init_layers(self, num_reg_fcs, in_channels):
        c = self.embed_dims
        # One class and one box branch serve every decoder layer (as published): the lists hold
        # the same module num_layers times.
        cls_branch = _mlp_branch(c, self.num_classes, num_reg_fcs, with_ln=True)
        reg_branch = _mlp_branch(c, len(self.code_weights), num_reg_fcs, with_ln=False)
        self.cls_branches = nn.ModuleList(cls_branch for _ in range(self.num_layers))
        self.reg_branches = nn.ModuleList(reg_branch for _ in range(self.num_layers))
        self.position_encoder = nn.Sequential(
            nn.Linear(self.depth_num * 3, c * 4), nn.ReLU(), nn.Linear(c * 4, c))
        self.memory_embed = nn.Sequential(nn.Linear(in_channels, c), nn.ReLU(), nn.Linear(c, c))
        self.featurized_pe = SELayerLinear(c)
        self.reference_points = nn.Embedding(self.num_query, 3)
        if self.num_propagated > 0:
            # Fixed anchors for empty memory slots; never trained (the memory is carried across
            # iterations, so it must hold no autograd history).
            self.pseudo_reference_points = nn.Embedding(self.num_propagated, 3)
            self.pseudo_reference_points.weight.requires_grad_(False)
        self.query_embedding = nn.Sequential(nn.Linear(c * 3 // 2, c), nn.ReLU(), nn.Linear(c, c))
        self.spatial_alignment = MLN(8, c)  # |fx|, |fy| and the ray's nearest/farthest points
        self.time_embedding = nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c))
        self.ego_pose_pe = MLN(180, c)  # 15 motion numbers through a 6-frequency NeRF encoding
        self.ego_pose_memory = MLN(180, c)

    def init_weights(self):
        super().init_weights()
        self.decoder.init_weights()
        nn.init.uniform_(self.reference_points.weight, 0, 1)
        if self.num_propagated > 0:
            nn.init.uniform_(self.pseudo_reference_points.weight, 0, 1)
        nn.init.constant_(self.cls_branches[0][-1].bias, bias_init_with_prob(0.01))

    # ---- memory queue -------------------------------------------------------------------------
    # The queue, per batch slot, newest first: query features, reference points in the current
    # LiDAR frame, age (s), pose relative to the current frame, velocity. `step` takes it and
    # returns the next one (stateless: what an exported graph carries between frames); the
    # module's own forward keeps it in these attributes between calls.
    MEMORY = ('memory_embedding', 'memory_reference_point', 'memory_timestamp',
              'memory_egopose', 'memory_velo')

    def reset_memory(self):
        self.memory_embedding = None

    def empty_memory(self, batch_size, device) -> dict:
        b, m = batch_size, self.memory_len
        return dict(memory_embedding=torch.zeros(b, m, self.embed_dims, device=device),
                    memory_reference_point=torch.zeros(b, m, 3, device=device),
                    memory_timestamp=torch.zeros(b, m, 1, device=device),
                    memory_egopose=torch.zeros(b, m, 4, 4, device=device),
                    memory_velo=torch.zeros(b, m, 2, device=device))

    def memory_to_step_from(self, memory, frame, batch_size, device):
        """(memory, frame) for `step`: the given queue, or an empty one with every slot
        starting afresh when there is none yet or the batch size changed."""
        if memory is None or memory['memory_embedding'].size(0) != batch_size:
            valid = torch.zeros(batch_size, dtype=torch.bool, device=device)
            return self.empty_memory(batch_size, device), dict(frame, valid=valid)
        return memory, frame

    def _pre_update_memory(self, memory, frame):
        """The queue moved into the current frame; emptied where a slot does not continue."""
        x = frame['valid'].float().view(-1, 1, 1)
        motion = frame['ego_motion']  # previous LiDAR frame -> current one
        ref = transform_points(memory['memory_reference_point'], motion) * x
        egopose = (motion[:, None] @ memory['memory_egopose']) * x[..., None]
        if self.num_propagated > 0:
            # Slots without a past get learned pseudo points, so propagated queries still exist.
            p = self.num_propagated
            pseudo = self.pseudo_reference_points.weight[:p] * (
                self.pc_range[3:] - self.pc_range[:3]) + self.pc_range[:3]
            ref = torch.cat([ref[:, :p] + (1 - x) * pseudo, ref[:, p:]], 1)
            eye = torch.eye(4, device=ref.device)
            egopose = torch.cat([egopose[:, :p] + (1 - x)[..., None] * eye, egopose[:, p:]], 1)
        return dict(
            memory_embedding=memory['memory_embedding'] * x,
            memory_reference_point=ref,
            memory_timestamp=(memory['memory_timestamp'] + frame['dt'].view(-1, 1, 1)) * x,
            memory_egopose=egopose,
            memory_velo=memory['memory_velo'] * x)

    def _post_update_memory(self, memory, cls_scores, bbox_preds, dec_out, pad):
        """The queue with this frame's top-k queries pushed in front."""
        score = cls_scores[:, pad:].sigmoid().max(-1, keepdim=True).values.detach()
        _, idx = score.topk(self.topk_proposals, dim=1)

        def gather(t):
            return t.gather(1, idx.view(*idx.shape[:2], *[1] * (t.dim() - 2)).expand(
                -1, -1, *t.shape[2:]))

        b, k = idx.shape[:2]
        rec = dict(
            memory_embedding=gather(dec_out[:, pad:].detach()),
            memory_reference_point=gather(bbox_preds[:, pad:, :3].detach()),
            memory_timestamp=torch.zeros(b, k, 1, device=idx.device),
            memory_egopose=torch.eye(4, device=idx.device).expand(b, k, 4, 4),
            memory_velo=gather(bbox_preds[:, pad:, -2:].detach()))
        return {name: torch.cat([new, memory[name]], 1)[:, :self.memory_len]
                for name, new in rec.items()}

    def _temporal_alignment(self, memory, query_pos, tgt, reference_points):
        b, q = query_pos.shape[:2]
        temp_ref = (memory['memory_reference_point'] - self.pc_range[:3]) / (
            self.pc_range[3:] - self.pc_range[:3])
        temp_pos = self.query_embedding(pos2posemb3d(temp_ref))
        temp_memory = memory['memory_embedding']
        eye = torch.eye(4, device=tgt.device)[:3].flatten()
        rec_motion = torch.cat([tgt.new_zeros(b, q, 3), eye.expand(b, q, 12)], -1)
        rec_motion = nerf_positional_encoding(rec_motion)
        tgt = self.ego_pose_memory(tgt, rec_motion)
        query_pos = self.ego_pose_pe(query_pos, rec_motion)
        mem_motion = torch.cat([memory['memory_velo'], memory['memory_timestamp'],
                                memory['memory_egopose'][..., :3, :].flatten(-2)], -1)
        mem_motion = nerf_positional_encoding(mem_motion)
        temp_pos = self.ego_pose_pe(temp_pos, mem_motion)
        temp_memory = self.ego_pose_memory(temp_memory, mem_motion)
        query_pos = query_pos + self.time_embedding(pos2posemb(tgt.new_zeros(b, q, 1), 256))
        temp_pos = temp_pos + self.time_embedding(pos2posemb(memory['memory_timestamp'], 256))
        p = self.num_propagated
        if p > 0:
            tgt = torch.cat([tgt, temp_memory[:, :p]], 1)
            query_pos = torch.cat([query_pos, temp_pos[:, :p]], 1)
            reference_points = torch.cat([reference_points, temp_ref[:, :p]], 1)
            temp_memory, temp_pos = temp_memory[:, p:], temp_pos[:, p:]
        return tgt, query_pos, reference_points, temp_memory, temp_pos

    # ---- 3D position embedding ----------------------------------------------------------------
    def _position_embedding(self, frame, h, w):
        device = self.position_range.device
        pad_h, pad_w = frame['pad_shape']
        # An explicit dtype (the ONNX trace keeps it): the depth bins', float64 in a .double() model.
        like = dict(device=device, dtype=self.coords_d.dtype)
        v = (torch.arange(h, **like) + 0.5) * pad_h / h
        u = (torch.arange(w, **like) + 0.5) * pad_w / w
        vv, uu, dd = torch.meshgrid(v, u, self.coords_d, indexing='ij')  # (h, w, D)
        coords = torch.stack([uu * dd, vv * dd, dd, torch.ones_like(dd)], -1)
        img2lidar = frame['img2lidar']  # (B, N, 4, 4)
        pts = torch.einsum('bnij,hwdj->bnhwdi', img2lidar, coords)[..., :3]
        pts = (pts - self.position_range[:3]) / (self.position_range[3:] - self.position_range[:3])
        b, n = img2lidar.shape[:2]
        pts = pts.reshape(b, n * h * w, self.depth_num, 3)
        pos_embed = self.position_encoder(inverse_sigmoid(pts.flatten(-2)))
        focal = frame['focal'].abs() / 1e3  # (B, N, 2)
        if self.per_view_intrinsics:
            intrinsic = focal[:, :, None].expand(b, n, h * w, 2).reshape(b, n * h * w, 2)
        else:
            intrinsic = focal.repeat(1, h * w, 1)  # token j: view j mod N (published)
        far, mid = self.cone_depth_bins
        cone = torch.cat([intrinsic, pts[:, :, far], pts[:, :, mid]], -1)
        return pos_embed, cone

    # ---- query denoising ----------------------------------------------------------------------
    def _prepare_for_dn(self, batch_size, reference_points, gt_bboxes, gt_labels):
        ref = reference_points.unsqueeze(0).repeat(batch_size, 1, 1)
        known_num = [len(g) for g in gt_bboxes] if gt_bboxes is not None else []
        if not (self.training and self.with_dn and known_num and max(known_num) > 0):
            return ref, None, None
        device = reference_points.device
        single_pad = max(known_num)
        groups = self.dn_groups  # as published: never lowered for frames with many boxes
        boxes = torch.cat(gt_bboxes).repeat(groups, 1)
        labels = torch.cat(gt_labels).repeat(groups).long().clone()
        bid = torch.cat([torch.full((n, ), i, device=device) for i, n in enumerate(known_num)])
        bid = bid.repeat(groups).long()
        centers = boxes[:, :3].clone()
        if self.dn_noise_scale > 0:
            rand = torch.rand_like(centers) * 2 - 1.0
            centers += rand * boxes[:, 3:6] / 2 * self.dn_noise_scale
            # Queries pushed too far from their box learn to say "background".
            labels[rand.norm(2, 1) > self.dn_split] = self.num_classes
        centers = ((centers - self.pc_range[:3]) / (self.pc_range[3:] - self.pc_range[:3])).clamp(0, 1)
        pad = single_pad * groups
        idx_in_sample = torch.cat([torch.arange(n, device=device) for n in known_num])
        slot = torch.cat([idx_in_sample + single_pad * g for g in range(groups)])
        ref = torch.cat([ref.new_zeros(batch_size, pad, 3), ref], 1)
        ref[bid, slot] = centers
        # Blocked pairs: real queries must not see the noised ones, groups must not see each other.
        q_size = pad + self.num_query + self.num_propagated
        k_size = pad + self.num_query + self.memory_len
        blocked = torch.zeros(q_size, k_size, dtype=torch.bool, device=device)
        blocked[pad:, :pad] = True
        for g in range(groups):
            s, e = single_pad * g, single_pad * (g + 1)
            blocked[s:e, :s] = True
            blocked[s:e, e:pad] = True
        dn = dict(pad=pad, bid=bid, slot=slot, labels=labels, boxes=boxes)
        return ref, blocked, dn

    # ---- forward / loss / predict -------------------------------------------------------------
    def forward(self, feats, frame, gt_bboxes=None, gt_labels=None):
        """feats (B, N, C, H, W). Returns per-layer class logits (L, B, Q, C), box codes
        (L, B, Q, 10) with metric centres, and the denoising bookkeeping (or None). The memory
        queue is the module's: a first call (or a new batch size) starts it empty."""
        memory = None if self.memory_embedding is None else {
            name: getattr(self, name) for name in self.MEMORY}
        memory, frame = self.memory_to_step_from(memory, frame, feats.size(0), feats.device)
        cls_scores, bbox_preds, dn, memory = self.step(feats, frame, memory, gt_bboxes,
                                                       gt_labels)
        for name, value in memory.items():
            setattr(self, name, value)
        return cls_scores, bbox_preds, dn

    def step(self, feats, frame, memory, gt_bboxes=None, gt_labels=None):
        """One frame, stateless: `forward`'s outputs and the next memory queue (a dict of
        `MEMORY` tensors). `frame` holds img2lidar (B, N, 4, 4), focal (B, N, 2), pad_shape,
        and since the previous frame: valid (B,), ego_motion (B, 4, 4), dt (B,)."""
        b, n, c, h, w = feats.shape
        memory = self._pre_update_memory(memory, frame)
        tokens = feats.permute(0, 1, 3, 4, 2).reshape(b, n * h * w, c)
        pos_embed, cone = self._position_embedding(frame, h, w)
        tokens = self.spatial_alignment(self.memory_embed(tokens), cone)
        pos_embed = self.featurized_pe(pos_embed, tokens)

        ref, blocked, dn = self._prepare_for_dn(b, self.learnable_reference_points(), gt_bboxes,
                                                gt_labels)
        query_pos = self.query_embedding(pos2posemb3d(ref))
        tgt = torch.zeros_like(query_pos)
        tgt, query_pos, ref, temp_memory, temp_pos = self._temporal_alignment(
            memory, query_pos, tgt, ref)
        dec = torch.nan_to_num(self.decoder(tgt, query_pos, tokens, pos_embed, temp_memory,
                                            temp_pos, blocked))
        ref = inverse_sigmoid(ref)
        # The branches are shared by all layers: run them once on the stacked layer outputs.
        cls_scores = self.cls_branches[0](dec)
        box = self.reg_branches[0](dec)
        centers = (box[..., :3] + ref).sigmoid()
        centers = centers * (self.pc_range[3:] - self.pc_range[:3]) + self.pc_range[:3]
        bbox_preds = torch.cat([centers, box[..., 3:]], -1)
        memory = self._post_update_memory(memory, cls_scores[-1], bbox_preds[-1], dec[-1],
                                          dn['pad'] if dn else 0)
        return cls_scores, bbox_preds, dn, memory

    def _match_loss(self, cls_scores, bbox_preds, gt_bboxes, gt_labels):
        b, q = cls_scores.shape[:2]
        labels = cls_scores.new_full((b, q), self.num_classes, dtype=torch.long)
        targets = bbox_preds.new_zeros(b, q, bbox_preds.size(-1))
        weights = torch.zeros_like(targets)
        for i in range(b):
            p_idx, g_idx = self.assigner.assign(bbox_preds[i].detach(), cls_scores[i].detach(),
                                                gt_bboxes[i], gt_labels[i], self.code_weights)
            labels[i, p_idx] = gt_labels[i][g_idx]
            targets[i, p_idx] = normalize_bbox(gt_bboxes[i][g_idx])
            weights[i, p_idx] = self.code_weights
        num_pos = reduce_mean(cls_scores.new_tensor(float((weights[..., 0] > 0).sum())))
        num_pos = num_pos.clamp(min=1.0)
        loss_cls = self.loss_cls(cls_scores.flatten(0, 1), labels.flatten(), avg_factor=num_pos)
        finite = targets.isfinite().all(-1)
        loss_bbox = self.loss_bbox(bbox_preds[finite], targets[finite], weights[finite],
                                   avg_factor=num_pos)
        return torch.nan_to_num(loss_cls), torch.nan_to_num(loss_bbox)

    def _dn_loss(self, cls_scores, bbox_preds, dn):
        cls = cls_scores[dn['bid'], dn['slot']]
        box = bbox_preds[dn['bid'], dn['slot']]
        num = reduce_mean(cls.new_tensor(float(len(dn['labels'])))).clamp(min=1.0)
        # The published normaliser: the share of the noise ball that stays positive.
        cls_avg = (num * 3.14159 / 6 * self.dn_split**3).clamp(min=1.0)
        loss_cls = self.loss_cls(cls, dn['labels'], avg_factor=cls_avg)
        targets = normalize_bbox(dn['boxes'])
        finite = targets.isfinite().all(-1)
        weights = self.code_weights.expand_as(targets)
        loss_bbox = self.loss_bbox(box[finite], targets[finite], weights[finite], avg_factor=num)
        return (self.dn_weight * torch.nan_to_num(loss_cls),
                self.dn_weight * torch.nan_to_num(loss_bbox))

    def loss(self, feats, frame, gt_bboxes, gt_labels):
        """gt_bboxes: per sample (K, 9) gravity-centre boxes with velocity; gt_labels (K,)."""
        cls_scores, bbox_preds, dn = self(feats, frame, gt_bboxes, gt_labels)
        pad = dn['pad'] if dn else 0
        losses = {}
        for lvl in range(self.num_layers):
            prefix = '' if lvl == self.num_layers - 1 else f'd{lvl}.'
            loss_cls, loss_bbox = self._match_loss(cls_scores[lvl][:, pad:],
                                                   bbox_preds[lvl][:, pad:], gt_bboxes, gt_labels)
            losses[f'{prefix}loss_cls'], losses[f'{prefix}loss_bbox'] = loss_cls, loss_bbox
            if dn:
                dn_cls, dn_bbox = self._dn_loss(cls_scores[lvl], bbox_preds[lvl], dn)
                losses[f'{prefix}dn_loss_cls'], losses[f'{prefix}dn_loss_bbox'] = dn_cls, dn_bbox
        return losses

    def predict(self, feats, frame):
        cls_scores, bbox_preds, _ = self(feats, frame)
        return self.decode(cls_scores[-1], bbox_preds[-1])

    def decode(self, cls_scores, bbox_preds):
        """Boxes, scores and labels per sample from the last layer's (B, Q, C) logits and
        (B, Q, 10) box codes."""
        results = []
        for cls, box in zip(cls_scores, bbox_preds):
            boxes, scores, labels = self.bbox_coder.decode(cls, box)
            boxes[:, 2] = boxes[:, 2] - boxes[:, 5] * 0.5  # gravity centre -> bottom centre
            res = InstanceData()
            res.bboxes_3d = LiDARInstance3DBoxes(boxes, box_dim=boxes.size(-1))
            res.scores_3d, res.labels_3d = scores, labels
            results.append(res)
        return results
