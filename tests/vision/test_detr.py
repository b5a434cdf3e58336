"""DETR with iRPE: box ops, matcher, loss, parity with nn.MultiheadAttention + a naive iRPE term, padding,
overfitting three real images, and the official DETR-with-iRPE checkpoint layout.

The official layout is written out here from the official code (facebookresearch/detr ``models/detr.py``,
``backbone.py``; microsoft/Cream ``iRPE/DETR-with-iRPE/models/transformer.py`` and ``rpe_attention/``):
torchvision ResNet keys under ``backbone.0.body.``, ``nn.MultiheadAttention`` names (``in_proj_weight``,
``in_proj_bias``, ``out_proj.*``) and ``self_attn.rpe_k.lookup_table_weight [1, head_dim, buckets]`` in the encoder.
"""
import argparse
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from domains.vision import detr as D
from domains.vision.coco import CocoDetection, collate, labelme_examples_root
from zoo.errors import CheckpointError, ConfigError
from zoo.pe.irpe import irpe_bucket_ids

pytestmark = pytest.mark.debian_data("labelme-examples")


# ---- boxes ------------------------------------------------------------------------------------------------------

def test_box_conversions_round_trip_and_pinned():
    b = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    xyxy = D.box_cxcywh_to_xyxy(b)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    g = torch.Generator().manual_seed(0)
    c = torch.rand(50, 4, generator=g)
    torch.testing.assert_close(D.box_xyxy_to_cxcywh(D.box_cxcywh_to_xyxy(c)), c, atol=1e-6, rtol=0)
    x0y0 = torch.rand(50, 2, generator=g)
    boxes = torch.cat([x0y0, x0y0 + torch.rand(50, 2, generator=g)], dim=1)
    torch.testing.assert_close(D.box_cxcywh_to_xyxy(D.box_xyxy_to_cxcywh(boxes)), boxes, atol=1e-6, rtol=0)


def test_generalized_box_iou_pinned():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 4], [1, 1, 3, 3]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [1, 1, 2, 2], [1, 1, 3, 3]])
    g = D.generalized_box_iou(a, b)
    # overlap 1, union 7, hull 9: 1/7 - 2/9;  disjoint: union 2, hull 3: -1/3;  nested: 1/16;  identical: 1
    expected = torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1 / 16, 1.0])
    torch.testing.assert_close(torch.diag(g), expected)
    assert g.shape == (4, 4)
    iou, union = D.box_iou(a, b)
    assert float(iou[0, 0]) == pytest.approx(1 / 7) and float(union[0, 0]) == pytest.approx(7.0)


# ---- matcher and criterion --------------------------------------------------------------------------------------

def naive_cost(logits, boxes, labels, tboxes, wc=1.0, wb=5.0, wg=2.0):
    prob = logits.softmax(-1)
    q, n = boxes.shape[0], tboxes.shape[0]
    c = torch.zeros(q, n)
    for i in range(q):
        for j in range(n):
            l1 = (boxes[i] - tboxes[j]).abs().sum()
            a, b = D.box_cxcywh_to_xyxy(boxes[i]).tolist(), D.box_cxcywh_to_xyxy(tboxes[j]).tolist()
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
            giou = inter / union - (hull - union) / hull
            c[i, j] = wb * l1 - wc * prob[i, labels[j]] - wg * giou
    return c


@pytest.mark.parametrize("q,n", [(5, 3), (4, 4), (6, 1)])
def test_matcher_is_optimal_against_brute_force(q, n):
    g = torch.Generator().manual_seed(q * 10 + n)
    logits = torch.randn(1, q, 4, generator=g)
    boxes = torch.rand(1, q, 4, generator=g) * 0.5 + 0.1
    target = {"labels": torch.randint(0, 3, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.1}
    matcher = D.HungarianMatcher()
    c = naive_cost(logits[0], boxes[0], target["labels"], target["boxes"])
    torch.testing.assert_close(matcher.cost_matrices({"pred_logits": logits, "pred_boxes": boxes}, [target])[0], c)
    (rows, cols), = matcher({"pred_logits": logits, "pred_boxes": boxes}, [target])
    assert len(rows) == n and len(set(rows.tolist())) == n and sorted(cols.tolist()) == list(range(n))
    best = min(sum(float(c[p[j], j]) for j in range(n)) for p in itertools.permutations(range(q), n))
    assert float(c[rows, cols].sum()) == pytest.approx(best, abs=1e-5)


def test_matcher_handles_an_image_without_targets():
    out = {"pred_logits": torch.randn(2, 3, 5), "pred_boxes": torch.rand(2, 3, 4)}
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    (r0, c0), (r1, c1) = D.HungarianMatcher()(out, targets)
    assert r0.numel() == 0 and c0.numel() == 0 and r1.numel() == 1 and c1.tolist() == [0]
    losses = D.SetCriterion(4)(out, targets)
    assert torch.isfinite(losses["loss"])


def test_criterion_values_from_the_formulas():
    # query 1 predicts the target box exactly and is matched; query 0 is "no object"
    tbox = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.4]]])
    logits = torch.tensor([[[0.1, 0.3, 2.0], [0.2, 1.5, -0.3]]])                 # 2 classes + no-object
    target = [{"labels": torch.tensor([1]), "boxes": tbox}]
    crit = D.SetCriterion(num_classes=2, eos_coef=0.1)
    losses = crit({"pred_logits": logits, "pred_boxes": boxes}, target)
    lp = logits[0].log_softmax(-1)
    # weighted mean: (0.1 * -log p0(no-object) + 1 * -log p1(class 1)) / (0.1 + 1)
    ce = (0.1 * -lp[0, 2] + 1.0 * -lp[1, 1]) / 1.1
    assert float(losses["loss_ce"]) == pytest.approx(float(ce), rel=1e-6)
    assert float(losses["loss_bbox"]) == pytest.approx(0.0, abs=1e-7)
    assert float(losses["loss_giou"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["loss"]) == pytest.approx(float(ce), rel=1e-6)
    # aux outputs are weighted the same way and summed in
    aux = {"pred_logits": logits, "pred_boxes": boxes + torch.tensor([0.0, 0.0, 0.1, 0.0])}
    l2 = crit({"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": [aux]}, target)
    assert float(l2["loss_bbox_0"]) == pytest.approx(0.1, rel=1e-5)
    expected = float(ce) * 2 + 5 * 0.1 + 2 * float(l2["loss_giou_0"])
    assert float(l2["loss"]) == pytest.approx(expected, rel=1e-5) and float(l2["loss_giou_0"]) > 0


# ---- sine embedding ---------------------------------------------------------------------------------------------

def test_sine_embedding_pinned_and_padding_invariant():
    mask = torch.ones(1, 2, 3, dtype=torch.bool)
    pe = D.sine_position_embedding(mask, num_pos_feats=4).view(1, 2, 3, 8)
    # F=4: t = 10000^(2*floor(i/2)/4) = 1, 1, 100, 100; y of row 0 = 1/2 * 2pi = pi, x of col 2 = 3/3 * 2pi = 2pi
    eps = 1e-6
    y0 = 1 / (2 + eps) * 2 * math.pi
    x2 = 3 / (3 + eps) * 2 * math.pi
    expected = [math.sin(y0), math.cos(y0), math.sin(y0 / 100), math.cos(y0 / 100),
                math.sin(x2), math.cos(x2), math.sin(x2 / 100), math.cos(x2 / 100)]
    torch.testing.assert_close(pe[0, 0, 2], torch.tensor(expected), atol=1e-6, rtol=0)
    padded = torch.zeros(1, 4, 5, dtype=torch.bool)
    padded[:, :2, :3] = True
    pp = D.sine_position_embedding(padded, num_pos_feats=4).view(1, 4, 5, 8)
    torch.testing.assert_close(pp[:, :2, :3], pe)


# ---- parity with the official attention (nn.MultiheadAttention + the iRPE term) ----------------------------------

def _mha_from(attn, d, nh):
    m = nn.MultiheadAttention(d, nh, batch_first=True)
    with torch.no_grad():
        m.in_proj_weight.copy_(attn.qkv.weight)
        m.in_proj_bias.copy_(attn.qkv.bias)
        m.out_proj.weight.copy_(attn.proj.weight)
        m.out_proj.bias.copy_(attn.proj.bias)
    return m.eval()


def reference_transformer(tr, src, mask, query_embed, pos_embed, nh):
    """The official DETR-with-iRPE transformer, written with nn.MultiheadAttention; the encoder's iRPE term
    ``(q * scale) . W[:, bucket(i, j)]`` is computed explicitly and passed as an additive attn_mask."""
    b, d, h, w = src.shape
    hd = d // nh
    x = src.flatten(2).transpose(1, 2)
    pad = torch.zeros(b, h * w).masked_fill(~mask.flatten(1), float("-inf"))     # additive key padding mask
    ids, _ = irpe_bucket_ids("product", h, w, skip=0, ratio=1.9)
    for layer in tr.encoder.layers:
        mha = _mha_from(layer.self_attn, d, nh)
        qk = x + pos_embed
        q = F.linear(qk, layer.self_attn.qkv.weight[:d], layer.self_attn.qkv.bias[:d])
        q = q.view(b, -1, nh, hd).transpose(1, 2) * hd ** -0.5                   # [b, nh, n, hd]
        table = layer.self_attn.pe.rpe_k.lookup_table_weight[0]                   # [hd, nb]
        rpe = torch.einsum("bhid,dij->bhij", q, table[:, ids])                    # [b, nh, n, n]
        out = mha(qk, qk, x, key_padding_mask=pad, attn_mask=rpe.reshape(b * nh, h * w, h * w),
                  need_weights=False)[0]
        x = layer.norm1(x + out)
        x = layer.norm2(x + layer.linear2(F.relu(layer.linear1(x))))
    memory = x
    qpos = query_embed.unsqueeze(0).expand(b, -1, -1)
    t = torch.zeros_like(qpos)
    hs = []
    for layer in tr.decoder.layers:
        sa, ca = _mha_from(layer.self_attn, d, nh), _mha_from(layer.cross_attn, d, nh)
        t = layer.norm1(t + sa(t + qpos, t + qpos, t, need_weights=False)[0])
        t = layer.norm2(t + ca(t + qpos, memory + pos_embed, memory, key_padding_mask=pad, need_weights=False)[0])
        t = layer.norm3(t + layer.linear2(F.relu(layer.linear1(t))))
        hs.append(tr.decoder.norm(t))
    return torch.stack(hs), memory


def test_transformer_matches_official_attention_with_irpe(one_thread):
    torch.manual_seed(0)
    d, nh, h, w = 32, 4, 4, 5
    tr = D.DETRTransformer(d, nh, 2, 2, 48, dropout=0.0, rpe=D.parse_rpe_string("rpe-1.9-product-ctx-1-k")).eval()
    with torch.no_grad():   # non-trivial tables and biases
        for p in tr.parameters():
            p.add_(0.05 * torch.randn_like(p))
    src = torch.randn(2, d, h, w)
    mask = torch.ones(2, h, w, dtype=torch.bool)
    mask[1, 3:, :] = False
    mask[1, :, 4:] = False
    pos_embed = D.sine_position_embedding(mask, d // 2)
    query = torch.randn(6, d)
    with torch.no_grad():
        hs, mem = tr(src, mask, query, pos_embed)
        ref_hs, ref_mem = reference_transformer(tr, src, mask, query, pos_embed, nh)
    assert hs.shape == (2, 2, 6, d)
    torch.testing.assert_close(hs, ref_hs, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(mem, ref_mem, atol=2e-5, rtol=1e-4)
    # the iRPE term matters: zeroing the tables changes the output
    with torch.no_grad():
        for layer in tr.encoder.layers:
            layer.self_attn.pe.rpe_k.lookup_table_weight.zero_()
        hs0, _ = tr(src, mask, query, pos_embed)
    assert (hs0 - hs).abs().max() > 1e-3


# ---- model ------------------------------------------------------------------------------------------------------

def test_models_are_registered_with_the_official_geometry():
    tiny = zoo.create("detr_irpe_tiny", num_classes=5, num_queries=4)
    assert tiny.class_embed.out_features == 6 and tiny.query_embed.weight.shape == (4, 64)
    r50 = D.detr_irpe_r50()
    pe = r50.transformer.encoder.layers[0].self_attn.pe
    assert (pe.method, pe.mode, pe.ratio, pe.shared_head, pe.skip, pe.rpe_on, pe.num_buckets) == \
        ("product", "contextual", 1.9, True, 0, "k", 49)
    assert pe.rpe_k.lookup_table_weight.shape == (1, 32, 49) and pe.rpe_q is None and pe.rpe_v is None
    assert all(getattr(layer.self_attn, "pe", None) is None for layer in r50.transformer.decoder.layers)
    assert len(r50.transformer.encoder.layers) == 6 and len(r50.transformer.decoder.layers) == 6
    assert r50.class_embed.out_features == 92 and r50.input_proj.in_channels == 2048
    assert r50.backbone.stride == 32
    # DETR trains layer2..4 of the backbone only
    body = r50.backbone.body
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    groups = r50.param_groups(lr=1e-4, lr_backbone=1e-5)
    assert [g["lr"] for g in groups] == [1e-4, 1e-5]
    assert sum(p.numel() for p in groups[1]["params"]) == sum(
        p.numel() for n, p in r50.named_parameters() if n.startswith("backbone.body.layer") and p.requires_grad)
    cfg = zoo.registry._REGISTRY["detr_irpe_r50"].cfgs["coco"]
    assert cfg.url.endswith("/rpe-1.9-product-ctx-1-k.pth") and cfg.paper == D.IRPE_PAPER and cfg.license
    assert "detr_irpe_r50.coco" in zoo.list_models("detr_*", pretrained=True)


def test_parse_rpe_string():
    assert D.parse_rpe_string("rpe-2.0-product-ctx-1-k") == dict(ratio=2.0, method="product", mode="contextual",
                                                                 shared_head=True, rpe_on="k")
    assert D.parse_rpe_string("rpe-1.9-euc-bias-0-qk")["shared_head"] is False
    assert D.parse_rpe_string("") is None
    for bad in ("rpe-1.9-product-ctx-k", "rpe-x-product-ctx-1-k", "rpe-1.9-product-soft-1-k"):
        with pytest.raises(ConfigError, match="rpe-"):
            D.parse_rpe_string(bad)
    plain = D.detr_irpe_tiny(enc_rpe2d="")
    assert plain.transformer.encoder.layers[0].self_attn.pe is None


def test_bad_input_raises():
    with pytest.raises(ConfigError, match="hidden_dim must be a multiple of 4"):
        D.detr_irpe_tiny(hidden_dim=66, nheads=6)
    model = D.detr_irpe_tiny(num_classes=3, num_queries=2)
    with pytest.raises(ValueError, match=r"mask must be \[B, H, W\]"):
        model(torch.zeros(1, 3, 32, 32), torch.ones(1, 32, 16, dtype=torch.bool))


def test_padding_does_not_change_outputs(one_thread):
    torch.manual_seed(0)
    root = labelme_examples_root()
    small = CocoDetection(root / "annotations.json", max_size=128)     # 87x128 and 96x128 images
    big = CocoDetection(root / "annotations.json", max_size=160)       # 108x160
    model = D.detr_irpe_tiny(num_classes=small.num_classes, num_queries=5, dropout=0.0).eval()
    with torch.no_grad():
        for layer in model.transformer.encoder.layers:   # a live iRPE term
            layer.self_attn.pe.rpe_k.lookup_table_weight.normal_(0, 0.5)
    for idx in (0, 1):
        img, _ = small[idx]
        images, mask, _ = collate([small[idx], big[2]], size_divisibility=16)
        assert mask[0].sum() < mask[0].numel()                           # really padded
        images[0][~mask[0].expand(3, -1, -1)] = torch.randn(int((~mask[0]).sum()) * 3)   # junk in the padding
        with torch.no_grad():
            alone = model(img[None])
            batched = model(images, mask)
        torch.testing.assert_close(batched["pred_logits"][0], alone["pred_logits"][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched["pred_boxes"][0], alone["pred_boxes"][0], atol=1e-5, rtol=1e-4)
    # without the mask, the padding is seen as image content
    with torch.no_grad():
        unmasked = model(images)
    assert (unmasked["pred_boxes"][0] - alone["pred_boxes"][0]).abs().max() > 1e-4


def test_overfits_three_labelme_images(one_thread):
    torch.manual_seed(0)
    ds = CocoDetection(labelme_examples_root() / "annotations.json", max_size=128)
    images, mask, targets = collate([ds[i] for i in range(len(ds))], size_divisibility=16)
    model = D.detr_irpe_tiny(num_classes=ds.num_classes, num_queries=10, dropout=0.0)
    criterion = D.SetCriterion(ds.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    history, first = [], None
    for _ in range(60):
        losses = criterion(model(images, mask), targets)
        first = first or {k: float(v.detach()) for k, v in losses.items()}
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(float(losses["loss"].detach()))
    with torch.no_grad():
        final = criterion(model(images, mask), targets)
    assert float(final["loss"]) < 0.5 * history[0], history
    assert float(final["loss_bbox"]) < 0.5 * first["loss_bbox"] and float(final["loss_ce"]) < 0.5 * first["loss_ce"]
    # the iRPE tables were trained (they receive gradient through the encoder logits)
    t = model.transformer.encoder.layers[0].self_attn.pe.rpe_k.lookup_table_weight
    assert t.grad is not None and t.grad.abs().sum() > 0


# ---- official checkpoint layout ---------------------------------------------------------------------------------

def official_state_dict(backbone="resnet18", d=32, nheads=4, enc=2, dec=2, ffn=48, queries=5, classes=3,
                        ratio=1.9, seed=0):
    """A DETR-with-iRPE ``model.state_dict()`` in the official key layout with random values."""
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = {}
    net = getattr(torchvision.models, backbone)(weights=None, norm_layer=FrozenBatchNorm2d)
    for k, v in net.state_dict().items():       # IntermediateLayerGetter(return_layers={'layer4': '0'}) drops fc
        if not k.startswith(("fc.", "avgpool.")):
            sd["backbone.0.body." + k] = r(*v.shape)
    cb = 512 if backbone in ("resnet18", "resnet34") else 2048
    sd["input_proj.weight"], sd["input_proj.bias"] = r(d, cb, 1, 1), r(d)
    sd["query_embed.weight"] = r(queries, d)
    sd["class_embed.weight"], sd["class_embed.bias"] = r(classes + 1, d), r(classes + 1)
    for i, (o, n) in enumerate([(d, d), (d, d), (4, d)]):
        sd[f"bbox_embed.layers.{i}.weight"], sd[f"bbox_embed.layers.{i}.bias"] = r(o, n), r(o)

    def mha(prefix):
        sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"] = r(3 * d, d), r(3 * d)
        sd[prefix + "out_proj.weight"], sd[prefix + "out_proj.bias"] = r(d, d), r(d)

    def ffn_norms(prefix, norms):
        sd[prefix + "linear1.weight"], sd[prefix + "linear1.bias"] = r(ffn, d), r(ffn)
        sd[prefix + "linear2.weight"], sd[prefix + "linear2.bias"] = r(d, ffn), r(d)
        for n in norms:
            sd[f"{prefix}{n}.weight"], sd[f"{prefix}{n}.bias"] = r(d), r(d)

    b = int(2 * ratio)
    for i in range(enc):
        p = f"transformer.encoder.layers.{i}."
        mha(p + "self_attn.")
        sd[p + "self_attn.rpe_k.lookup_table_weight"] = r(1, d // nheads, (2 * b + 1) ** 2)
        ffn_norms(p, ("norm1", "norm2"))
    for i in range(dec):
        p = f"transformer.decoder.layers.{i}."
        mha(p + "self_attn.")
        mha(p + "multihead_attn.")
        ffn_norms(p, ("norm1", "norm2", "norm3"))
    sd["transformer.decoder.norm.weight"], sd["transformer.decoder.norm.bias"] = r(d), r(d)
    return sd


SMALL = dict(backbone="resnet18", hidden_dim=32, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=48,
             num_queries=5, num_classes=3)


def test_checkpoint_filter_maps_the_official_layout():
    sd = official_state_dict()
    model = D.detr_irpe_r50(**SMALL)
    out = D.checkpoint_filter_fn({"model": sd, "epoch": 149}, model)
    own = model.state_dict()
    assert set(out) == set(own), (sorted(set(out) - set(own))[:5], sorted(set(own) - set(out))[:5])
    zoo.load_checkpoint(model, out, source="official layout")
    m = model.transformer
    torch.testing.assert_close(m.encoder.layers[1].self_attn.pe.rpe_k.lookup_table_weight,
                               sd["transformer.encoder.layers.1.self_attn.rpe_k.lookup_table_weight"])
    torch.testing.assert_close(m.decoder.layers[0].cross_attn.qkv.weight,
                               sd["transformer.decoder.layers.0.multihead_attn.in_proj_weight"])
    torch.testing.assert_close(m.decoder.layers[1].self_attn.proj.bias,
                               sd["transformer.decoder.layers.1.self_attn.out_proj.bias"])
    torch.testing.assert_close(m.encoder.layers[0].self_attn.qkv.bias,
                               sd["transformer.encoder.layers.0.self_attn.in_proj_bias"])
    torch.testing.assert_close(model.backbone.body.layer3[1].bn2.running_var,
                               sd["backbone.0.body.layer3.1.bn2.running_var"])
    torch.testing.assert_close(model.bbox_embed.layers[2].weight, sd["bbox_embed.layers.2.weight"])


def test_official_checkpoint_file_loads_through_create(tmp_path):
    sd = official_state_dict(seed=1)
    sd["transformer.encoder.layers.0.self_attn.rpe_k.lookup_table_weight"] = torch.full((1, 8, 49), 0.25)
    sd["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(7)        # tolerated, dropped
    path = tmp_path / "rpe-1.9-product-ctx-1-k.pth"
    torch.save({"model": sd, "epoch": 149, "args": argparse.Namespace(enc_rpe2d="rpe-1.9-product-ctx-1-k")}, path)
    model = zoo.create("detr_irpe_r50", pretrained_file=str(path), **SMALL)
    t = model.transformer.encoder.layers[0].self_attn.pe.rpe_k.lookup_table_weight
    assert torch.equal(t, torch.full((1, 8, 49), 0.25))
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 96))
    assert out["pred_boxes"].shape == (1, 5, 4)


def test_checkpoint_filter_mismatches():
    model = D.detr_irpe_r50(**SMALL)
    ratio2 = official_state_dict(ratio=2.0)                     # rpe-2.0-...: 9x9 = 81 buckets
    with pytest.raises(CheckpointError, match=r"rpe_k\.lookup_table_weight.*\(1, 8, 81\).*1\.9.*49 buckets"):
        D.checkpoint_filter_fn({"model": ratio2}, model)
    coco = official_state_dict(classes=91)                       # COCO head, fine-tuning on 3 classes
    before = model.class_embed.weight.detach().clone()
    out = D.checkpoint_filter_fn({"model": coco}, model)
    zoo.load_checkpoint(model, out)
    assert torch.equal(model.class_embed.weight, before)
    torch.testing.assert_close(model.query_embed.weight, coco["query_embed.weight"])
    tiny = D.detr_irpe_tiny(**{k: v for k, v in SMALL.items() if k != "backbone"})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        zoo.load_checkpoint(tiny, D.checkpoint_filter_fn(official_state_dict(), tiny))
