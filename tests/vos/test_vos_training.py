"""The training pass over short clips: shapes, the soft-aggregated targets, and gradients."""

import torch
import torch.nn.functional as F
from vos_fixtures import box_mask, random_frames, tiny_config, tiny_model

from models.vos import STCN, VosSession, prepare_frame


def clip_batch(batch=2, length=3, objects=2, size=32):
    frames = torch.randn(batch, length, 3, size, size)
    masks = torch.zeros(batch, objects, size, size)
    masks[:, 0, 4:14, 4:14] = 1
    masks[0, 1, 18:30, 18:30] = 1  # clip 1 has one object only: its second mask is empty
    return frames, masks


def test_forward_clip_shapes_and_probabilities():
    torch.manual_seed(0)
    model = STCN(tiny_config())
    frames, masks = clip_batch()
    logits, probs = model.forward_clip(frames, masks)
    assert logits.shape == (2, 2, 3, 32, 32)  # B, T-1, background + K, H, W
    assert probs.shape == (2, 2, 2, 32, 32)
    assert torch.allclose(torch.softmax(logits, dim=2)[:, :, 1:], probs, atol=1e-6)
    # The absent object of clip 1 gets (almost) nothing.
    assert probs[1, :, 1].max() < 1e-5


def test_forward_clip_trains():
    torch.manual_seed(0)
    model = STCN(tiny_config())
    frames, masks = clip_batch()
    logits, _ = model(frames, masks, top_k=None)  # forward is the training pass
    target = torch.zeros(2, 2, 32, 32, dtype=torch.long)  # background everywhere
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(0, 1))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["key_proj.key_proj.weight"].abs().sum() > 0
    assert grads["value_encoder.conv1.weight"].abs().sum() > 0


def test_the_training_pass_segments_as_a_session_does():
    # Same frames, same masks on frame 0, top-k as at inference: frame 1 must come out the same.
    model = tiny_model()
    frames = random_frames(2, 32, 48, seed=5)
    masks = {1: box_mask(32, 48, 2, 2, 14), 2: box_mask(32, 48, 16, 24, 14)}
    session = VosSession(model)
    session.add_prompt(0, masks)
    session.step(frames[0])
    results = session.step(frames[1])
    images = torch.cat([prepare_frame(frame, None).image for frame in frames])
    first = torch.stack([torch.from_numpy(mask).float() for mask in masks.values()])
    with torch.no_grad():
        _, probs = model.forward_clip(images[None], first[None], top_k=20)
    for row, object_id in enumerate(masks):
        assert torch.allclose(probs[0, 0, row], results[object_id].prob, atol=1e-5)
