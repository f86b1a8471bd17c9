"""Compiled control flow: which while loops XLA knows the trip count of, in the train steps too.

A while loop of unknown trip count makes XLA:GPU read its predicate on the host every iteration
(see vireid_jax/runtime/xla_loops.py); these tests compile on CPU, where XLA annotates the same counts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vireid_jax import memory as memory_lib
from vireid_jax import models
from vireid_jax import sampling
from vireid_jax.runtime import sharding
from vireid_jax import train_state
from vireid_jax.runtime import xla_loops
from vireid_jax.methods.mbccm import memories as mbccm_memories
from vireid_jax.methods.mbccm import sampler as mbccm_sampler

from train_test import tiny_config  # pylint: disable=g-bad-import-order

# Unoptimised CPU code compiles several times faster; trip counts are found before codegen.
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def test_control_flow_reads_trip_counts_scopes_and_conditionals():
  def fn(x):
    with jax.named_scope('data_dependent'):
      y = jax.lax.while_loop(lambda c: jnp.sum(c) < 100.0, lambda c: c * 1.5 + 1.0, x)
    with jax.named_scope('static'):
      z = jax.lax.fori_loop(0, 7, lambda i, c: c * 1.1 + jnp.sin(c + i), x)
    return jax.lax.cond(jnp.sum(y) > jnp.sum(z), lambda: y - z, lambda: y + z)

  text = jax.jit(fn).lower(jnp.ones(3)).compile().as_text()
  loops = {loop.op_name.split('/')[1]: loop for loop in xla_loops.while_loops(text)}
  assert loops['data_dependent'].trip_count is None
  assert loops['static'].trip_count == 7
  summary = xla_loops.host_predicates(text)
  assert summary['while_loops'] == 2 and summary['conditionals'] == 1
  assert summary['unknown_trip_count_loops'] == 1
  assert summary['unknown_trip_count_ops'] == [loops['data_dependent'].op_name]


def _compiled_step_text(stage: int, loop: str) -> str:
  """HLO of the tiny stage-`stage` train step with by-rank memory updates, compiled on CPU."""
  config = tiny_config()
  config.memory.update_method = 'by_rank'  # the GPU/TPU form, here on the CPU
  config.augment.linear_transform_prob = 0.8  # the rectangles loop is compiled
  config.augment.linear_transform_loop = loop
  config.augment.linear_transform_first_phase = 3
  config.augment.linear_transform_straggler_slots = 2  # < B: the cond for overflow is there
  model = models.build_model(config.model)
  mesh = sharding.make_mesh(jax.devices()[:1])
  num_clusters, num_images = 4, 24
  labels = np.arange(num_images) % num_clusters
  if stage == 1:
    plan = sampling.stage1_plan(labels, labels, 2, 4, 2, 0)
  else:
    plan = mbccm_sampler.stage2_plan(labels, labels, np.eye(num_clusters, dtype=bool), 2, 4, 2, 0)
  repeats = train_state.step_label_repeats(config, plan)
  assert repeats is not None  # by_rank: the step gets its static bound
  step_fn = train_state.make_train_step(model, config, mesh, stage, label_repeats=repeats)
  state = train_state.abstract_train_state(config, model, mesh)
  centers = memory_lib.pad_rows(np.eye(num_clusters, 32, dtype=np.float32), 16)
  memories = mbccm_memories.Memories.from_centers(centers, centers, num_visible=num_clusters,
                                                  num_infrared=num_clusters)
  images = np.zeros((num_images, config.data.image_height, config.data.image_width, 3),
                    np.uint8)
  inputs = train_state.put_epoch_inputs(plan, epoch=0, first_step=0, mesh=mesh)
  lowered = step_fn.lower(state, memories, {'visible': images, 'infrared': images},
                         inputs)
  return lowered.compile(compiler_options=FAST_COMPILE).as_text()


@pytest.mark.parametrize('stage, loop', [(1, 'fixed'), (2, 'while'), (2, 'two_phase')])
def test_train_step_loops_have_known_trip_counts_but_the_while_rectangles(stage, loop):
  flow = xla_loops.control_flow(_compiled_step_text(stage, loop))
  loops = [c for c in flow if c.kind == 'while']
  memory_rounds = [c for c in loops if 'memory_rounds' in c.op_name]
  # Stage 1: the visible table's partial update (reference gradients) and both updates;
  # stage 2: also 4 partial and 2 full agnostic updates.
  assert len(memory_rounds) == (3 if stage == 1 else 9)
  assert all(c.trip_count is not None for c in memory_rounds)
  unknown = [c.op_name for c in loops if c.trip_count is None]
  # The rectangles loops themselves, not the PRNG loops inside their bodies.
  rectangles = [c for c in loops if 'multiply_rectangles' in c.op_name
                and c.op_name.endswith('vmap()/while') and '/body/' not in c.op_name]
  if loop == 'while':
    assert len(unknown) == 1 and 'multiply_rectangles' in unknown[0], unknown
  else:
    assert not unknown, unknown
    counts = sorted(c.trip_count for c in rectangles)
    # fixed: the bound, 64; two_phase: 3 for the batch, then 61 for the stragglers.
    assert counts == ([64] if loop == 'fixed' else [3, 61, 61])
  conditionals = [c.op_name for c in flow if c.kind == 'conditional']
  if loop == 'two_phase':  # the one for more stragglers than slots
    assert len(conditionals) == 1 and 'multiply_rectangles' in conditionals[0], conditionals
  else:
    assert not conditionals, conditionals


@pytest.mark.parametrize('method_name', ['cluster_contrast', 'pgm'])
def test_every_phase_of_the_other_methods_has_no_host_read_loop(method_name):
  """The other methods' steps with by-rank updates: every loop's trip count is known and no
  conditional is left (PGM's epoch parity is a compiled phase, not a cond)."""
  from export_test import _epoch_inputs, _phases  # pylint: disable=import-outside-toplevel
  from export_test import tiny_config as export_config  # pylint: disable=import-outside-toplevel
  from vireid_jax import methods  # pylint: disable=import-outside-toplevel
  config = export_config(method_name)
  config.memory.update_method = 'by_rank'
  config.augment.linear_transform_prob = 0.0
  method = methods.load(method_name)
  model = models.build_model(config.model)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train_state.abstract_train_state(config, model, mesh)
  for schedule in _phases(method, config):
    plan, memories, _ = _epoch_inputs(method, config, schedule)
    repeats = train_state.step_label_repeats(config, plan)
    step_fn = train_state.make_train_step(model, config, mesh, schedule.phase,
                                          label_repeats=repeats)
    images = np.zeros((64, config.data.image_height, config.data.image_width, 3), np.uint8)
    inputs = train_state.put_epoch_inputs(plan, epoch=schedule.epoch, first_step=0, mesh=mesh)
    text = step_fn.lower(state, memories, {'visible': images, 'infrared': images},
                         inputs).compile(
        compiler_options=FAST_COMPILE).as_text()
    flow = xla_loops.control_flow(text)
    assert [c.op_name for c in flow if c.kind == 'while' and c.trip_count is None] == []
    assert [c.op_name for c in flow if c.kind == 'conditional'] == [], schedule.phase
    assert any('memory_rounds' in c.op_name for c in flow if c.kind == 'while')
