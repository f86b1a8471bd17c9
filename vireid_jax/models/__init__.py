"""The two-stream ResNet of MBCCM and its ImageNet weight import."""

from vireid_jax.models.resnet import (BatchGroups, BatchNorm, NonLocal, TwoStreamResNet,
                                      build_model, compute_dtype,
                                      copy_visible_stem_to_infrared, gem_pool, init_variables,
                                      l2_normalize, non_local_positions)
from vireid_jax.models.weights import (export_torch_state_dict, import_torch_state_dict,
                                       load_imagenet_resnet, read_state_dict,
                                       WeightsFileError, WeightsMismatchError)
