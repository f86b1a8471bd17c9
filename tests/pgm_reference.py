"""Transcriptions of the PGM reference's memories and training loss (torch CPU), for the tests.

Not a test file: `memory_hard_test.py` and `pgm_losses_test.py` import it. From
zesenwu23/USL-VI-ReID at ed4a7df: `CM`, `CM_Hard`, `ClusterMemory` are
clustercontrast/models/cm.py:9-99 verbatim but for the `.cuda()` of CM:92/106 (dropped: CPU) and
the commented-out code; `reference_step` is the loss part of ClusterContrastTrainer.train
(clustercontrast/trainers.py:76-104) without the network and the optimiser.
"""

import collections
from abc import ABC

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, autograd


class CM(autograd.Function):

  @staticmethod
  def forward(ctx, inputs, targets, features, momentum):
    ctx.features = features
    ctx.momentum = momentum
    ctx.save_for_backward(inputs, targets)
    outputs = inputs.mm(ctx.features.t())

    return outputs

  @staticmethod
  def backward(ctx, grad_outputs):
    inputs, targets = ctx.saved_tensors
    grad_inputs = None
    if ctx.needs_input_grad[0]:
      grad_inputs = grad_outputs.mm(ctx.features)

    # momentum update
    for x, y in zip(inputs, targets):
      ctx.features[y] = ctx.momentum * ctx.features[y] + (1. - ctx.momentum) * x
      ctx.features[y] /= ctx.features[y].norm()

    return grad_inputs, None, None, None


def cm(inputs, indexes, features, momentum=0.5):
  return CM.apply(inputs, indexes, features, torch.Tensor([momentum]).to(inputs.device))


class CM_Hard(autograd.Function):

  @staticmethod
  def forward(ctx, inputs, targets, features, momentum):
    ctx.features = features
    ctx.momentum = momentum
    ctx.save_for_backward(inputs, targets)
    outputs = inputs.mm(ctx.features.t())

    return outputs

  @staticmethod
  def backward(ctx, grad_outputs):
    inputs, targets = ctx.saved_tensors
    grad_inputs = None
    if ctx.needs_input_grad[0]:
      grad_inputs = grad_outputs.mm(ctx.features)

    batch_centers = collections.defaultdict(list)
    for instance_feature, index in zip(inputs, targets.tolist()):
      batch_centers[index].append(instance_feature)

    for index, features in batch_centers.items():
      distances = []
      for feature in features:
        distance = feature.unsqueeze(0).mm(ctx.features[index].unsqueeze(0).t())[0][0]
        distances.append(distance.cpu().numpy())

      median = np.argmin(np.array(distances))
      ctx.features[index] = (ctx.features[index] * ctx.momentum
                             + (1 - ctx.momentum) * features[median])
      ctx.features[index] /= ctx.features[index].norm()

    return grad_inputs, None, None, None


def cm_hard(inputs, indexes, features, momentum=0.5):
  return CM_Hard.apply(inputs, indexes, features, torch.Tensor([momentum]).to(inputs.device))


class ClusterMemory(nn.Module, ABC):
  def __init__(self, num_features, num_samples, temp=0.05, momentum=0.2, use_hard=False):
    super(ClusterMemory, self).__init__()
    self.num_features = num_features
    self.num_samples = num_samples

    self.momentum = momentum
    self.temp = temp
    self.use_hard = use_hard

    self.register_buffer('features', torch.zeros(num_samples, num_features))

  def forward(self, inputs, targets, momentum=None):
    if not momentum:
      inputs = F.normalize(inputs, dim=1)
      if self.use_hard:
        outputs = cm_hard(inputs, targets, self.features, self.momentum)
      else:
        outputs = cm(inputs, targets, self.features, self.momentum)
      outputs /= self.temp
      loss = F.cross_entropy(outputs, targets)
      return loss
    else:
      inputs = F.normalize(inputs, dim=1)
      if self.use_hard:
        outputs = cm_hard(inputs, targets, self.features, momentum)
      else:
        outputs = cm(inputs, targets, self.features, momentum)
      outputs /= self.temp
      loss = F.cross_entropy(outputs, targets)
      return loss


def memory(table, use_hard, temp=0.05, momentum=0.2):
  """A ClusterMemory holding a copy of `table` ((K, C) numpy), as train_*.py builds one."""
  module = ClusterMemory(table.shape[1], table.shape[0], temp=temp, momentum=momentum,
                         use_hard=use_hard)
  module.features = torch.tensor(np.array(table, np.float32))
  return module


def reference_step(f_out_rgb, f_out_ir, labels_rgb, labels_ir, memory_rgb, memory_ir, epoch,
                   i2r=None, r2i=None, drop_unmatched=False):
  """trainers.py:76-104 from the network's outputs on; `i2r`, `r2i` dicts (or None).

  `drop_unmatched=True` is NOT the reference (which raises KeyError on a missing key): rows whose
  label has a partner of -1 are left out of the cross call, the behaviour vireid_jax defines.

  Args:
    f_out_rgb: (2B, C) numpy visible features [view A; view B].
    f_out_ir: (B_i, C) numpy infrared features.
    labels_rgb: (2B,) visible labels (already concatenated, trainers.py:68).
    labels_ir: (B_i,) infrared labels.
    memory_rgb, memory_ir: ClusterMemory modules; their tables are updated in place.
    epoch: the stage-2 epoch (its parity picks the cross direction).

  Returns:
    (loss float, grad of f_out_rgb (2B, C), grad of f_out_ir (B_i, C)) as numpy.
  """
  f_out_rgb = torch.tensor(np.array(f_out_rgb, np.float32), requires_grad=True)
  f_out_ir = torch.tensor(np.array(f_out_ir, np.float32), requires_grad=True)
  labels_rgb = torch.tensor(np.asarray(labels_rgb, np.int64))
  labels_ir = torch.tensor(np.asarray(labels_ir, np.int64))

  # intra-modality nce loss
  loss_ir = memory_ir(f_out_ir, labels_ir)
  loss_rgb = memory_rgb(f_out_rgb, labels_rgb)

  # cross contrastive learning
  if r2i:
    rgb2ir_labels = torch.tensor([r2i[key.item()] for key in labels_rgb])
    ir2rgb_labels = torch.tensor([i2r[key.item()] for key in labels_ir])
    alternate = True
    if alternate:
      # accl
      if drop_unmatched:
        if epoch % 2 == 1:
          keep = ir2rgb_labels >= 0
          cross_loss = 1 * memory_rgb(f_out_ir[keep], ir2rgb_labels[keep].long())
        else:
          keep = rgb2ir_labels >= 0
          cross_loss = 1 * memory_ir(f_out_rgb[keep], rgb2ir_labels[keep].long())
      elif epoch % 2 == 1:
        cross_loss = 1 * memory_rgb(f_out_ir, ir2rgb_labels.long())
      else:
        cross_loss = 1 * memory_ir(f_out_rgb, rgb2ir_labels.long())
  else:
    cross_loss = torch.tensor(0.0)

  new_loss_rgb = loss_rgb
  new_cross_loss = cross_loss

  loss = loss_ir + new_loss_rgb + 0.25 * new_cross_loss  # total loss
  loss.backward()
  return loss.item(), f_out_rgb.grad.numpy(), f_out_ir.grad.numpy()
