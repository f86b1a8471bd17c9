"""MBCCM's own training loop (`train_mbccm.py`: `main`, `main_worker`), fed the project's data.

The authors' `main()` runs as it is, with the CPU patches of torch_cpu.py and these
replacements of what reads files or draws the data (monkeypatched into its module, never an
edited copy):

  SYSUMM01(...)                      our training images: `train_rgb` / `train_ir` as
                                     (path, identity, camera) in our order (identity, camera,
                                     file: SYSU.py's too), paths those of the raw layout
  datasetr_for_feature_extractor     our uint8 training images, ToTensor + Normalize as
                                     torchvision computes them (torch_cpu.to_tensor_normalize)
  pseudo_label_dataset, IdentitySampler, IdentitySamplerAssign
                                     replaced by our sampled batches: the DataLoader of an
                                     epoch yields (view A, view B, infrared, y_v, y_i) exactly
                                     as our step fed its network, labels in their numbering
  process_query_sysu, process_gallery_sysu, TestData, test
                                     empty (no evaluation: --eval-step above the run)
  Logger, save_checkpoint            the log goes to <out>/reference_log.txt; no checkpoints

and these observation points, which change nothing they compute:

  extract_features_for_cluster       the state each epoch starts from (at the visible call)
  compute_jaccard_distance           the features clustered
  DBSCAN(...).fit_predict            their partition; where it differs from ours only by
                                     pairs at eps, ours continues (issue: "continue both from
                                     the project's labels")
  mbccm_matching                     the match mask
  AssignTrainer.train                the memories as initialised (entry)
  optimizer.step                     loss terms (the train frame's locals), gradient norm,
                                     learning rate; after it, the parameters, BatchNorm
                                     statistics and memory tables
"""

import os
import sys
import types

import numpy as np
import torch

from benchmarks.lockstep import names
from benchmarks.lockstep import reference_common as common
from benchmarks.lockstep import torch_cpu
from benchmarks.lockstep.settings import RunSettings

MARKER = 'train_mbccm.py'
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Their memories by our names.
TABLES = (('visible', 'memory_RGB'), ('infrared', 'memory_IR'),
          ('agnostic_visible', 'memory_RGB_IR'), ('agnostic_infrared', 'memory_IR_RGB'))


def args_for(settings: RunSettings, logs_dir: str) -> types.SimpleNamespace:
  """train_mbccm.py's argparse defaults (train_mbccm.py:394-458) at the lockstep's sizes."""
  s = settings
  return types.SimpleNamespace(
      seed=s.seed, workers=0, dataset='sysu', mode='all', epochs=s.epochs,
      img_w=s.image_size[1], img_h=s.image_size[0], test_batch=s.eval_batch,
      batch_size=s.clusters_per_step, num_pos=s.instances_per_cluster, print_step=10**9,
      eval_step=10**9, start_epoch_two_modality=s.stage1_epochs, eps=s.eps, k1=s.k1, k2=s.k2,
      arch='resnet50', pool_dim=2048, per_add_iters=1, lr=s.learning_rate, optim='adam',
      pooling_type='gem', train_iter=s.steps_per_epoch, pretrained=False, momentum=0.1,
      momentum_cross=0.1, temp=0.05, use_hard=False, alpha=0.9, beta=0.5,
      data_dir='<lockstep: the project\'s images>', logs_dir=logs_dir)


def imagenet_from(initial: dict) -> dict:
  """The torchvision ResNet-50 state dict `resnet50(pretrained=True)` loads: our visible stem
  and trunk (the three ResNet-50s of their network all load it, as they load ImageNet)."""
  out = {}
  for name, value in initial.items():
    if name.startswith(names.VISIBLE_PREFIX):
      out[name[len(names.VISIBLE_PREFIX):]] = value
    elif name.startswith(names.TRUNK_PREFIX):
      out[name[len(names.TRUNK_PREFIX):]] = value
  return out


def run(reference_dir: str, settings: RunSettings, feed, sink, out_dir: str,
        dtype=torch.float32) -> None:
  """Runs their `main()` for the whole lockstep run, reporting to `sink` (a
  compare.Comparison against `feed`, our side's record.Recording)."""
  code = torch_cpu.find_folder(reference_dir, MARKER)
  if code is None:
    raise FileNotFoundError(f'{reference_dir}: no {MARKER} below it; fetch the authors\' code '
                            f'(docs/verification.md)')
  torch_cpu.setup(settings.groups, dtype)
  torch_cpu.add_path(code)
  sys.dont_write_bytecode = True  # leave no __pycache__ in their checkout
  data = feed.read_data()
  # SYSU.py's paths: <root>/SYSU-MM01/camX/<id>/<file> (our raw-layout relative paths)
  their_paths = {m: data[f'{m}/paths'] for m in common.MODALITIES}
  ls = common.Lockstep(settings, feed, sink, their_paths,
                       os.path.join(out_dir, 'reference_log.txt'))
  imagenet = torch_cpu.as_torch_state(imagenet_from(ls.initial))

  import torch.utils.model_zoo as model_zoo  # pylint: disable=import-outside-toplevel
  load_url = lambda url, *args, **kwargs: {k: v.clone() for k, v in imagenet.items()}
  model_zoo.load_url = load_url
  backbone = __import__('model.backbone.resnet', fromlist=['resnet'])
  backbone.model_zoo.load_url = load_url
  tm = __import__('train_mbccm')
  trainer_module = __import__('trainer')
  _patch(tm, trainer_module, ls, settings, dtype)
  sink.initial(ls.initial)
  args = args_for(settings, out_dir)
  tm.parser = types.SimpleNamespace(parse_args=lambda: args)
  stdout = sys.stdout
  try:
    tm.main()
  finally:
    sys.stdout = stdout


def _patch(tm, trainer_module, ls: common.Lockstep, settings: RunSettings, dtype) -> None:
  data = ls.data
  s = settings

  class Dataset:  # SYSUMM01(args, data_dir)
    def __init__(self, *args, **kwargs):
      self.train_rgb = [(str(p), int(i), int(c)) for p, i, c in zip(
          data['visible/paths'], data['visible/pids'], data['visible/cams'])]
      self.train_ir = [(str(p), int(i), int(c)) for p, i, c in zip(
          data['infrared/paths'], data['infrared/pids'], data['infrared/cams'])]

  class ExtractSet:  # datasetr_for_feature_extractor(trainset, img_h, img_w)
    def __init__(self, trainset, img_h=None, img_w=None):
      self.modality = 'visible' if len(trainset) == ls.sizes['visible'] else 'infrared'

  class TrainSet:  # pseudo_label_dataset(args, RGB_set, IR_set, ...)
    def __init__(self, args, RGB_set=None, IR_set=None, *rest, **kwargs):
      self.label_RGB = [label for _, label in RGB_set]
      self.label_IR = [label for _, label in IR_set]

  class Sampler:  # IdentitySampler / IdentitySamplerAssign: our plan replaces them
    def __init__(self, *args, **kwargs):
      self.index1 = self.index2 = np.zeros(0, np.int64)

  class Batches:
    """The epoch's steps as their loader yields them, read from our record one at a time."""

    def __init__(self, epoch):
      self.steps = list(ls.feed.steps_of_epoch(epoch))

    def __len__(self):
      return len(self.steps)

    def __iter__(self):
      for step in self.steps:
        r = ls.feed.read_step(step)
        view_a, view_b = common.tensor(r['inputs/visible'], dtype).chunk(2)
        yield (view_a, view_b, common.tensor(r['inputs/infrared'], dtype),
               torch.from_numpy(ls.their_labels('visible', r['labels/visible'])),
               torch.from_numpy(ls.their_labels('infrared', r['labels/infrared'])))

  def data_loader(dataset, batch_size=1, *args, **kwargs):
    if isinstance(dataset, ExtractSet):
      images = data[f'{dataset.modality}/images']
      paths = data[f'{dataset.modality}/paths']
      pids = data[f'{dataset.modality}/pids']
      batches = []
      for begin in range(0, len(images), batch_size):
        x = torch_cpu.to_tensor_normalize(images[begin:begin + batch_size], MEAN, STD).to(dtype)
        # (fnames, imgs_original, imgs_intermediate, pids); the second image is unused there
        batches.append(([str(p) for p in paths[begin:begin + batch_size]], x, x,
                        torch.from_numpy(np.asarray(pids[begin:begin + batch_size]))))
      return batches
    if isinstance(dataset, TrainSet):
      return Batches(ls.epoch)
    return []  # test loaders: never iterated (no evaluation)

  real_dbscan = tm.DBSCAN
  real_jaccard = tm.compute_jaccard_distance
  real_matching = tm.mbccm_matching
  real_extract = tm.extract_features_for_cluster
  real_base = tm.BaseResNet
  real_optimizer = tm.select_optimizer
  real_train = trainer_module.AssignTrainer.train

  def compute_jaccard_distance(features, *args, **kwargs):
    modality = ls.modality_of(len(features))
    ls.record[f'features/{modality}'] = ls.to_ours(features.numpy(), modality)
    ls.jaccard_calls[modality] = (args, kwargs)
    return real_jaccard(features, *args, **kwargs)

  def mbccm_matching(centers_rgb, centers_ir, args, epoch):
    mask = real_matching(centers_rgb, centers_ir, args, epoch)
    ls.record['association/match_mask'] = np.asarray(mask).astype(bool)
    # The decisive check: their matching of OUR centres (our memories as initialised are the
    # normalised centres, train_mbccm.py:255-262) must be our match mask.
    ours = ls.ours_epoch()
    on_ours = real_matching(
        common.tensor(common.in_their_numbering(ours['memories/visible'], ls.maps['visible']),
                      centers_rgb.dtype),
        common.tensor(common.in_their_numbering(ours['memories/infrared'], ls.maps['infrared']),
                      centers_ir.dtype), args, epoch)
    on_ours = np.asarray(on_ours).astype(bool)[np.ix_(ls.maps['infrared'], ls.maps['visible'])]
    ls.record['association_on_our_centres'] = bool(
        np.array_equal(on_ours, np.asarray(ours['association/match_mask']).astype(bool)))
    return mask

  def extract_features_for_cluster(model, loader, *args, mode=None, **kwargs):
    if mode == 'RGB':  # main_worker's epoch starts here (train_mbccm.py:248)
      ls.epoch += 1
      ls.record = {f'start/{k}': v for k, v in ls.state().items()}
    return real_extract(model, loader, *args, mode=mode, **kwargs)

  def base_resnet(*args, **kwargs):
    model = real_base(*args, **kwargs)
    common.state_setup(model, ls.initial)
    ls.model = model
    return model

  def select_optimizer(args, main_net):
    ls.model = main_net
    optimizer = real_optimizer(args, main_net)
    parameters = common.params_of(optimizer)

    def before():
      local = common.locals_of(real_train.__code__)  # trainer.py:272, at optimizer.step()
      value = lambda name: float(local[name].detach()) if name in local else 0.0
      stage = 1 if ls.epoch < args.start_epoch_two_modality else 2
      return {'epoch': ls.epoch, 'stage': stage, 'lr': optimizer.param_groups[0]['lr'],
              'grad_norm': torch_cpu.step_norm(parameters),
              'loss/ms': value('loss_ms'), 'loss/total': value('loss_all'),
              'loss/ma': value('loss_ma_rgb') + value('loss_ma_ir') if stage == 2 else 0.0,
              'loss/cc': value('loss_cc') if stage == 2 else 0.0}

    common.record_steps(optimizer, before, lambda record: ls.finish_step(record, TABLES))
    return optimizer

  def train(self, args, epoch, trainloader, optimizer):
    ls.trainer = self
    if epoch != ls.epoch:
      raise RuntimeError(f'their epoch {epoch} is not the lockstep\'s {ls.epoch}')
    record = dict(ls.record, epoch=epoch, stage=1 if epoch < args.start_epoch_two_modality else 2)
    for ours, theirs in TABLES:
      record[f'memories/{ours}'] = getattr(self, theirs).features.numpy().copy()
    ls.sink.epoch(epoch, record)
    ls.record = {}
    return real_train(self, args, epoch, trainloader, optimizer)

  tm.SYSUMM01 = Dataset
  tm.datasetr_for_feature_extractor = ExtractSet
  tm.pseudo_label_dataset = TrainSet
  tm.IdentitySampler = tm.IdentitySamplerAssign = Sampler
  tm.process_query_sysu = lambda *args, **kwargs: ([], np.zeros(0, np.int64),
                                                   np.zeros(0, np.int64))
  tm.process_gallery_sysu = tm.process_query_sysu
  tm.TestData = lambda *args, **kwargs: None
  tm.data = types.SimpleNamespace(DataLoader=data_loader)
  tm.Logger = lambda path: common.LogFile(ls.log_path)
  tm.save_checkpoint = lambda *args, **kwargs: None
  tm.DBSCAN = common.recording_dbscan(ls, real_dbscan, real_jaccard, dtype)
  tm.compute_jaccard_distance = compute_jaccard_distance
  tm.mbccm_matching = mbccm_matching
  tm.extract_features_for_cluster = extract_features_for_cluster
  tm.BaseResNet = base_resnet
  tm.select_optimizer = select_optimizer
  trainer_module.AssignTrainer.train = train
  del s
