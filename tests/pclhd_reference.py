"""Transcriptions of the PCLHD reference's numerical pieces (torch CPU, numpy), for the tests.

Not a test file: the tests/pclhd_*_test.py files import it. From XiangboYin/PCLHD at 8a376cd
(blob-identical in shijiangming1/PCLHD):

- `CM`, `CM_Hybrid`, `CM_Hard`, `ClusterMemory`: clustercontrast/models/cm.py:11-191 verbatim
  but for the `.cuda()` of CM:143,158 (dropped: CPU) and CM:7-8's unused imports.
- `reference_stage1_step`, `reference_stage2_step`: the loss part of the two trainers
  (clustercontrast/trainers.py:71-82 and 150-209) from the network's outputs on, with the
  features as leaf tensors, without the network and the optimiser (their `optimizer.step()`s
  are what the port's training step does with the gradients returned here).
- `update_ema_variables`: trainers.py:249-251.
- `compute_modal_invariant_jaccard_distance`: clustercontrast/utils/faiss_rerank.py:126-246 with
  search_option=3, faiss's `IndexFlatL2` search replaced by an exact squared-L2 ranking with
  stable ties (`clustering_jaccard_l2_test.l2_rank`; faiss's order among exact ties is
  unspecified).
- `generate_modal_invariant_cluster_features`, `associated_analysis_for_all`,
  `joint_training_lists`, `generate_random_features`: train_sysu.py:858-888, 352-380, 958-981,
  891-898 (nested functions and loop bodies of main_worker_stage2, lifted out).
- `sysu_pgm`: train_sysu.py:985-1034 (the nested `PGM`); `regdb_pgm`: train_regdb.py:816-847.
"""

import collections
import warnings
from abc import ABC

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn, autograd

from clustering_jaccard_l2_test import k_reciprocal_neigh
from clustering_jaccard_l2_test import l2_rank

# ---------------------------------------------------------------------------------------------
# clustercontrast/models/cm.py


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


class CM_Hybrid(autograd.Function):

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
    nums = len(ctx.features)//2
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

      mean = torch.stack(features, dim=0).mean(0)
      ctx.features[index] = ctx.features[index] * ctx.momentum + (1 - ctx.momentum) * mean
      ctx.features[index] /= ctx.features[index].norm()

      hard = np.argmin(np.array(distances))
      ctx.features[index+nums] = ctx.features[index+nums] * ctx.momentum + (1 - ctx.momentum) * features[hard]
      ctx.features[index+nums] /= ctx.features[index+nums].norm()

    return grad_inputs, None, None, None


def cm_hybrid(inputs, indexes, features, momentum=0.5):
  return CM_Hybrid.apply(inputs, indexes, features, torch.Tensor([momentum]).to(inputs.device))


class CM_Hard(autograd.Function):

  @staticmethod
  def forward(ctx, inputs, targets, features, momentum, num_instances):
    ctx.features = features
    ctx.momentum = momentum
    ctx.num_instances = num_instances
    ctx.save_for_backward(inputs, targets)
    outputs = inputs.mm(ctx.features.t())

    return outputs

  @staticmethod
  def backward(ctx, grad_outputs):
    inputs, targets = ctx.saved_tensors
    nums = len(ctx.features) // ctx.num_instances
    grad_inputs = None
    if ctx.needs_input_grad[0]:
      grad_inputs = grad_outputs.mm(ctx.features)

    batch_centers = collections.defaultdict(list)
    for instance_feature, index in zip(inputs, targets.tolist()):
      batch_centers[index].append(instance_feature)

    # 更新实例特征 (update the instance features)
    for index, features in batch_centers.items():
      indexes = [index + nums * i for i in range(0, ctx.num_instances)]
      if len(features) >= 16:
        ids = np.random.choice(len(features), len(indexes), replace=False)
      else:
        ids = np.random.choice(len(features), len(indexes), replace=True)

      ctx.features[indexes] = torch.stack(features)[ids]

    return grad_inputs, None, None, None, None


def cm_hard(inputs, indexes, features, momentum=0.5, num_instances=16):
  return CM_Hard.apply(inputs, indexes, features, torch.Tensor([momentum]).to(inputs.device), num_instances)


class ClusterMemory(nn.Module, ABC):
  def __init__(self, num_features, num_samples, temp=0.05, momentum=0.2, mode='CM', hard_weight=0.5, smooth=0,
               num_instances=16):
    super(ClusterMemory, self).__init__()
    self.num_features = num_features
    self.num_samples = num_samples

    self.momentum = momentum
    self.temp = temp
    self.cm_type = mode

    assert smooth == 0  # CrossEntropyLabelSmooth (CM:139-141) is never used
    self.cross_entropy = nn.CrossEntropyLoss()

    if self.cm_type == 'CM':
      self.register_buffer('features', torch.zeros(num_samples, num_features))
    elif self.cm_type == 'CMhybrid':
      self.register_buffer('features', torch.zeros(2 * num_samples, num_features))
    elif self.cm_type == 'CMhard':
      self.hard_weight = hard_weight
      self.num_instances = num_instances
      self.register_buffer('features', torch.zeros(2 * num_samples, num_features))
      self.register_buffer('features_ema', torch.zeros(self.num_instances * num_samples, num_features))
    else:
      raise TypeError('Cluster Memory {} is invalid!'.format(self.cm_type))

  def forward(self, inputs, targets, model_name='encoder'):
    inputs = F.normalize(inputs, dim=1)
    if self.cm_type == 'CM':
      outputs = cm(inputs, targets, self.features, self.momentum)
      outputs /= self.temp
      loss = self.cross_entropy(outputs, targets)
      return loss

    elif self.cm_type == 'CMhybrid':
      outputs = cm_hybrid(inputs, targets, self.features, self.momentum)
      outputs /= self.temp
      mean, hard = torch.chunk(outputs, 2, dim=1)
      r = 0.2
      loss = 0.5 * (self.cross_entropy(hard, targets) + torch.relu(self.cross_entropy(mean, targets) - r))
      return loss

    elif self.cm_type == 'CMhard':
      if model_name == 'encoder':
        outputs = cm_hybrid(inputs, targets, self.features, self.momentum)
        outputs /= self.temp
        mean, hard = torch.chunk(outputs, 2, dim=1)
        r = 0.2
        loss1 = 0.5 * (self.cross_entropy(hard, targets) + torch.relu(self.cross_entropy(mean, targets) - r))
        return loss1
      elif model_name == 'encoder_ema':
        outputs = cm_hard(inputs, targets, self.features_ema, self.momentum, self.num_instances)
        outputs /= self.temp
        out_list = torch.chunk(outputs, self.num_instances, dim=1)
        out = torch.stack(out_list, dim=0)
        neg = torch.max(out, dim=0)[0]
        pos = torch.min(out, dim=0)[0]
        mask = torch.zeros_like(out_list[0]).scatter_(1, targets.unsqueeze(1), 1)
        mask_in = mask * pos + (1 - mask) * neg
        loss2 = self.cross_entropy(mask_in, targets)
        return loss2


def memory(table, mode, momentum=0.1, temp=0.05, instances=None):
  """A ClusterMemory holding copies of `table` (numpy; (2K, C) for the hybrid modes, (K, C) for
  'CM') and, for 'CMhard', of `instances` ((16K, C)) as train_sysu.py:910-935 builds one."""
  table = np.asarray(table, np.float32)
  rows = table.shape[0] if mode == 'CM' else table.shape[0] // 2
  module = ClusterMemory(table.shape[1], rows, temp=temp, momentum=momentum, mode=mode,
                         num_instances=16)
  module.features = torch.tensor(table.copy())
  if instances is not None:
    module.features_ema = torch.tensor(np.array(instances, np.float32))
  return module


def _leaf(x):
  return torch.tensor(np.array(x, np.float32), requires_grad=True)


# ---------------------------------------------------------------------------------------------
# clustercontrast/trainers.py


def reference_stage1_step(f_out_rgb, f_out_ir, labels_rgb, labels_ir, memory_rgb, memory_ir):
  """ClusterContrastTrainer_DCL.train's loss (trainers.py:77-82) from the network's outputs.

  Returns (loss, grad of f_out_rgb, grad of f_out_ir); the memories update in place."""
  f_out_rgb, f_out_ir = _leaf(f_out_rgb), _leaf(f_out_ir)
  labels_rgb = torch.tensor(np.asarray(labels_rgb, np.int64))
  labels_ir = torch.tensor(np.asarray(labels_ir, np.int64))
  loss_ir = memory_ir(f_out_ir, labels_ir)
  loss_rgb = memory_rgb(f_out_rgb, labels_rgb)
  loss = loss_ir + loss_rgb
  loss.backward()
  return loss.item(), f_out_rgb.grad.numpy(), f_out_ir.grad.numpy()


def reference_stage2_step(f_out_rgb, f_out_ir, labels_rgb, labels_ir, f_out_rgb_ema,
                          f_out_ir_ema, f_out_all_rgb, f_out_all_ir, labels_all_rgb,
                          labels_all_ir, memory_rgb, memory_ir, memory_all, epoch, i2r, r2i):
  """ClusterContrastTrainer_PCLMP.train's iteration (trainers.py:150-209) from the outputs on.

  Args:
    f_out_rgb (2B, C), f_out_ir (B_i, C): the student's main-batch features (leaf tensors here).
    labels_rgb (2B,) (already [y; y], trainers.py:145), labels_ir (B_i,).
    f_out_rgb_ema, f_out_ir_ema: the teacher's features of the same inputs (no_grad).
    f_out_all_rgb (2B', C), f_out_all_ir (B_i', C), labels_all_rgb, labels_all_ir: the joint
      batch's student features and joint labels (from the second forward, trainers.py:197-200).
    memory_rgb, memory_ir: 'CMhard' ClusterMemory; memory_all: 'CMhybrid'. Updated in place.
    epoch: the stage-2 epoch; i2r, r2i: dicts ({} = no association).

  Returns:
    dict: loss, loss2, the four gradients, and the logged terms (loss_ir, loss_rgb, cross_loss,
    loss_ir_ema, loss_rgb_ema, loss_all_ir, loss_all_rgb) as floats.
  """
  f_out_rgb, f_out_ir = _leaf(f_out_rgb), _leaf(f_out_ir)
  labels_rgb = torch.tensor(np.asarray(labels_rgb, np.int64))
  labels_ir = torch.tensor(np.asarray(labels_ir, np.int64))

  loss_ir = memory_ir(f_out_ir, labels_ir)
  loss_rgb = memory_rgb(f_out_rgb, labels_rgb)

  # cross contrastive learning
  if r2i:
    rgb2ir_labels = torch.tensor([r2i[key.item()] for key in labels_rgb])
    ir2rgb_labels = torch.tensor([i2r[key.item()] for key in labels_ir])
    alternate = True
    if alternate:
      # accl
      if epoch % 2 == 1:
        cross_loss = 1 * memory_rgb(f_out_ir, ir2rgb_labels.long())
      else:
        cross_loss = 1 * memory_ir(f_out_rgb, rgb2ir_labels.long())
  else:
    cross_loss = torch.tensor(0.0)

  new_loss_rgb = loss_rgb
  new_cross_loss = cross_loss

  with torch.no_grad():  # the teacher's forward (trainers.py:173-176): its outputs
    f_out_rgb_ema = torch.tensor(np.array(f_out_rgb_ema, np.float32))
    f_out_ir_ema = torch.tensor(np.array(f_out_ir_ema, np.float32))
    labels_rgb_ema, labels_ir_ema = labels_rgb, labels_ir
  loss_ir_ema = memory_ir(f_out_ir_ema, labels_ir_ema, model_name='encoder_ema')
  loss_rgb_ema = memory_rgb(f_out_rgb_ema, labels_rgb_ema, model_name='encoder_ema')
  loss_ema = loss_ir_ema + loss_rgb_ema
  loss = loss_ir + new_loss_rgb + 0.25 * new_cross_loss + loss_ema  # total loss

  loss.backward()  # optimizer.zero_grad(); loss.backward(); optimizer.step()

  f_out_all_rgb, f_out_all_ir = _leaf(f_out_all_rgb), _leaf(f_out_all_ir)
  labels_all_rgb = torch.tensor(np.asarray(labels_all_rgb, np.int64))
  labels_all_ir = torch.tensor(np.asarray(labels_all_ir, np.int64))

  loss_all_ir = memory_all(f_out_all_ir, labels_all_ir)
  loss_all_rgb = memory_all(f_out_all_rgb, labels_all_rgb)

  loss2 = loss_all_ir + loss_all_rgb

  loss2.backward()  # optimizer.zero_grad(); loss2.backward(); optimizer.step()
  return dict(loss=loss.item(), loss2=loss2.item(), grad_rgb=f_out_rgb.grad.numpy(),
              grad_ir=f_out_ir.grad.numpy(), grad_all_rgb=f_out_all_rgb.grad.numpy(),
              grad_all_ir=f_out_all_ir.grad.numpy(), loss_ir=loss_ir.item(),
              loss_rgb=loss_rgb.item(), cross_loss=cross_loss.item(),
              loss_ir_ema=loss_ir_ema.item(), loss_rgb_ema=loss_rgb_ema.item(),
              loss_all_ir=loss_all_ir.item(), loss_all_rgb=loss_all_rgb.item(),
              ema_requires_grad=loss_ema.requires_grad)


def update_ema_variables(model, ema_model, alpha):
  """ClusterContrastTrainer_PCLMP._update_ema_variables (trainers.py:249-251)."""
  for ema_param, param in zip(ema_model.parameters(), model.parameters()):
    ema_param.data.mul_(alpha).add_(param.data, alpha=1 - alpha)


# ---------------------------------------------------------------------------------------------
# clustercontrast/utils/faiss_rerank.py


def compute_modal_invariant_jaccard_distance(target_features, file, k1=20, k2=6):
  """FR:126-246 with search_option=3, use_float16=False, print_flag off (faiss: see above)."""
  all_file_name = []
  for i, (fname, _, cid) in enumerate(file):
    all_file_name.append(fname)

  N = target_features.size(0)
  mat_type = np.float32

  initial_rank = l2_rank(target_features.numpy(), min(k1, N))  # index.search(features, k1)

  nn_k1 = []
  nn_k1_half = []
  for i in range(N):
    nn_k1.append(k_reciprocal_neigh(initial_rank, i, k1))
    nn_k1_half.append(k_reciprocal_neigh(initial_rank, i, int(np.around(k1/2))))

  V = np.zeros((N, N), dtype=mat_type)
  for i in range(N):
    k_reciprocal_index = nn_k1[i]
    k_reciprocal_expansion_index = k_reciprocal_index
    for candidate in k_reciprocal_index:
      candidate_k_reciprocal_index = nn_k1_half[candidate]
      if (len(np.intersect1d(candidate_k_reciprocal_index,k_reciprocal_index)) > 2/3*len(candidate_k_reciprocal_index)):
        k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index,candidate_k_reciprocal_index)

    k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)  ## element-wise unique
    dist = 2-2*torch.mm(target_features[i].unsqueeze(0).contiguous(), target_features[k_reciprocal_expansion_index].t())
    V[i,k_reciprocal_expansion_index] = F.softmax(-dist, dim=1).view(-1).cpu().numpy()

  del nn_k1, nn_k1_half

  if k2 != 1:
    V_qe = np.zeros_like(V, dtype=mat_type)
    for i in range(N):
      feas_NIR_temp=[]
      feas_VIS_temp=[]

      for ii in initial_rank[i,:k2]:

        if 'ir_modify' in all_file_name[ii]:
          feas_NIR_temp.append(V[ii,:])
        elif 'rgb_modify' in all_file_name[ii]:
          feas_VIS_temp.append(V[ii,:])
      feas_VIS_temp=np.array(feas_VIS_temp)
      feas_NIR_temp=np.array(feas_NIR_temp)

      with warnings.catch_warnings():  # the mean of an empty list warns (and is not used)
        warnings.simplefilter('ignore', RuntimeWarning)
        NIR_embedings_person_mean = np.mean(feas_NIR_temp, axis=0)
        VIS_embedings_person_mean = np.mean(feas_VIS_temp, axis=0)
      if len(feas_VIS_temp) == 0:
        V_qe[i, :] = NIR_embedings_person_mean
      elif len(feas_NIR_temp) == 0:
        V_qe[i, :] = VIS_embedings_person_mean
      else:
        V_qe[i, :] = np.mean([NIR_embedings_person_mean, VIS_embedings_person_mean], axis=0)

    V = V_qe
    del V_qe

  del initial_rank

  invIndex = []
  for i in range(N):
    invIndex.append(np.where(V[:,i] != 0)[0])  #len(invIndex)=all_num

  jaccard_dist = np.zeros((N, N), dtype=mat_type)
  for i in range(N):
    temp_min = np.zeros((1, N), dtype=mat_type)
    indNonZero = np.where(V[i, :] != 0)[0]
    indImages = []
    indImages = [invIndex[ind] for ind in indNonZero]
    for j in range(len(indNonZero)):
      temp_min[0, indImages[j]] = temp_min[0, indImages[j]]+np.minimum(V[i, indNonZero[j]], V[indImages[j], indNonZero[j]])

    jaccard_dist[i] = 1-temp_min/(2-temp_min)

  del invIndex, V

  pos_bool = (jaccard_dist < 0)
  jaccard_dist[pos_bool] = 0.0

  return jaccard_dist


# ---------------------------------------------------------------------------------------------
# train_sysu.py, train_regdb.py


def file_list(is_infrared):
  """The sorted visible list then the sorted infrared list, as (fname, pid, cam) tuples whose
  paths carry the modality as the prepared datasets' do ('rgb_modify' / 'ir_modify')."""
  return [(('ir_modify/%d' if ir else 'rgb_modify/%d') % i, 0, 0)
          for i, ir in enumerate(is_infrared)]


def generate_modal_invariant_cluster_features(labels, num_cluster_all, features, file):
  """train_sysu.py:858-888 (under @torch.no_grad())."""
  centers_IR = collections.defaultdict(list)
  centers_RBG = collections.defaultdict(list)
  centers_IR_mean = collections.defaultdict(list)
  centers_RBG_mean = collections.defaultdict(list)
  for i, (label, (fname, _, cid)) in enumerate(zip(labels, file)):
    if label == -1:
      continue
    if 'rgb_modify' in fname:
      centers_RBG[labels[i]].append(features[i])
    elif 'ir_modify' in fname:
      centers_IR[labels[i]].append(features[i])
    else:
      raise AssertionError
  for i in range(num_cluster_all):
    if centers_RBG[i] != []:
      centers_RBG_mean[i] = torch.stack(centers_RBG[i], dim=0).mean(0)
    if centers_IR[i] != []:
      centers_IR_mean[i] = torch.stack(centers_IR[i], dim=0).mean(0)
  centers_all = []
  for i in range(num_cluster_all):
    if centers_RBG_mean[i] == []:
      centers_all.append(centers_IR_mean[i])
    elif centers_IR_mean[i] == []:
      centers_all.append(centers_RBG_mean[i])
    else:
      centers_all.append(torch.mean(torch.stack([centers_RBG_mean[i], centers_IR_mean[i]], dim=0), dim=0))
  centers_all = torch.stack(centers_all, dim=0)

  return centers_all


def associated_analysis_for_all(all_origin, all_pred, image_paths_for_all, log_dir):
  """train_sysu.py:352-380, but for its print."""
  label_count_all = -1
  all_label_set = list(set(all_pred))
  all_label_set.sort()
  class_NIRVIS_list_modal_all = []
  associate = 0
  flag_ir_list = collections.defaultdict(list)
  flag_rgb_list = collections.defaultdict(list)
  for idx_, lab_ in enumerate(all_label_set):
    label_count_all += 1
    class_NIRVIS_list_modal = []
    flag_ir = 0
    flag_rgb = 0
    for idx, lab in enumerate(all_pred):
      if lab_ == lab:
        if 'ir_modify' in image_paths_for_all[idx]:
          flag_ir = 1
          flag_ir_list[idx_] = 1
        elif 'rgb_modify' in image_paths_for_all[idx]:
          flag_rgb = 1
          flag_rgb_list[idx_] = 1
    class_NIRVIS_list_modal_all.extend([class_NIRVIS_list_modal])

    if flag_ir == 1 and flag_rgb == 1:
      associate = associate + 1

  return flag_ir_list, flag_rgb_list


def joint_training_lists(pseudo_labels_all, file):
  """train_sysu.py:958-981: (pseudo_labeled_dataset_all_ir, pseudo_labeled_dataset_all_rgb)."""
  all_label = []
  all_file_name = []
  for i, ((fname, _, cid), label) in enumerate(zip(file, pseudo_labels_all)):
    if label != -1:
      all_file_name.append(fname)
      all_label.append(label.item())

  flag_ir_list, flag_rgb_list = associated_analysis_for_all(pseudo_labels_all, all_label,
                                                            all_file_name, None)

  all_label = []
  pseudo_labeled_dataset_all_ir = []
  pseudo_labeled_dataset_all_rgb = []
  for i, ((fname, _, cid), label) in enumerate(zip(file, pseudo_labels_all)):
    if label != -1:
      all_file_name.append(fname)
      all_label.append(label.item())
    if 'ir_modify' in fname and flag_ir_list[label] == 1 and flag_rgb_list[label] == 1:
      pseudo_labeled_dataset_all_ir.append((fname, label.item(), cid))
    elif 'rgb_modify' in fname and flag_ir_list[label] == 1 and flag_rgb_list[label] == 1:
      pseudo_labeled_dataset_all_rgb.append((fname, label.item(), cid))
  return pseudo_labeled_dataset_all_ir, pseudo_labeled_dataset_all_rgb


def generate_random_features(labels, features, num_cluster, num_instances):
  """train_sysu.py:891-898 (the global np.random stream)."""
  indexes = np.zeros(num_cluster * num_instances)
  for i in range(num_cluster):
    index = [i + k * num_cluster for k in range(num_instances)]
    samples = np.random.choice(np.where(labels == i)[0], num_instances, True)
    indexes[index] = samples
  memory_features = features[indexes]
  return memory_features


def sysu_pgm(num_cluster1, num_cluster2, cluster_features1, cluster_features2):
  """train_sysu.py:985-1034 (the nested `PGM`), verbatim but for the commented-out print."""
  a2b = {}
  b2a = {}
  R = []
  bgm = False

  cluster_features1 = F.normalize(cluster_features1, dim=1)
  cluster_features2 = F.normalize(cluster_features2, dim=1)
  similarity = ((torch.mm(cluster_features1, cluster_features2.T)) / 1).exp().cpu()
  dis_similarity = (1 / (similarity))
  cost = dis_similarity / 1
  tmp = torch.zeros(dis_similarity.shape[0], dis_similarity.shape[0] - dis_similarity.shape[1])
  cost = (torch.cat((cost, tmp), 1))
  unmatched_row = []
  row_ind, col_ind = linear_sum_assignment(cost)
  for idx, item in enumerate(row_ind):
    if col_ind[idx] < similarity.shape[1]:
      R.append((row_ind[idx], col_ind[idx]))
      a2b[row_ind[idx]] = col_ind[idx]
      b2a[col_ind[idx]] = row_ind[idx]
    else:
      unmatched_row.append(row_ind[idx])
  if bgm is False:
    if len(unmatched_row)<dis_similarity.shape[1]:
      unmatched_cost = cost[unmatched_row][:, :dis_similarity.shape[1]]
      unmatched_row_ind, unmatched_col_ind = linear_sum_assignment(unmatched_cost)
      for idx, item in enumerate(unmatched_row_ind):
        R.append((unmatched_row[idx], unmatched_col_ind[idx]))
        a2b[unmatched_row[idx]] = unmatched_col_ind[idx]
    else:
      unmatched = []
      unmatched_cost = cost[unmatched_row][:, :len(unmatched_row)]
      unmatched_row_ind, unmatched_col_ind = linear_sum_assignment(unmatched_cost)
      for idx, item in enumerate(unmatched_row_ind):
        if unmatched_col_ind[idx] < similarity.shape[1]:
          R.append((unmatched_row[idx], unmatched_col_ind[idx]))
          a2b[unmatched_row[idx]] = unmatched_col_ind[idx]
          b2a[unmatched_col_ind[idx]] = unmatched_row[idx]
        else:
          unmatched.append(unmatched_row[idx])

      unmatched_cost = cost[unmatched][:, :dis_similarity.shape[1]]
      unmatched_row_ind, unmatched_col_ind = linear_sum_assignment(unmatched_cost)
      for idx, item in enumerate(unmatched_row_ind):
        R.append((unmatched[idx], unmatched_col_ind[idx]))
        a2b[unmatched[idx]] = unmatched_col_ind[idx]
        b2a[unmatched_col_ind[idx]] = unmatched[idx]

  return a2b, b2a


def regdb_pgm(num_cluster_rgb, num_cluster_ir, cluster_features_rgb, cluster_features_ir):
  """train_regdb.py:816-847 (inline there), returning (r2i, i2r)."""
  i2r = {}
  r2i = {}
  R = []
  bgm = False
  if num_cluster_rgb >= num_cluster_ir:
    # clusternorm
    cluster_features_rgb = F.normalize(cluster_features_rgb, dim=1)
    cluster_features_ir = F.normalize(cluster_features_ir, dim=1)
    similarity = ((torch.mm(cluster_features_rgb, cluster_features_ir.T)) / 1).exp().cpu()
    dis_similarity = (1 / (similarity))
    cost = dis_similarity / 1
    tmp = torch.zeros(dis_similarity.shape[0], dis_similarity.shape[0] - dis_similarity.shape[1])
    cost = (torch.cat((cost, tmp), 1))
    unmatched_row = []
    row_ind, col_ind = linear_sum_assignment(cost)
    for idx, item in enumerate(row_ind):
      if col_ind[idx] < similarity.shape[1]:
        R.append((row_ind[idx], col_ind[idx]))
        r2i[row_ind[idx]] = col_ind[idx]
        i2r[col_ind[idx]] = row_ind[idx]
      else:
        unmatched_row.append(row_ind[idx])
    if bgm is False:
      unmatched_cost = cost[unmatched_row][:, :dis_similarity.shape[1]]
      unmatched_row_ind, unmatched_col_ind = linear_sum_assignment(unmatched_cost)
      for idx, item in enumerate(unmatched_row_ind):
        R.append((unmatched_row[idx], unmatched_col_ind[idx]))
        r2i[unmatched_row[idx]] = unmatched_col_ind[idx]
    del cluster_features_ir, cluster_features_rgb
  return r2i, i2r
